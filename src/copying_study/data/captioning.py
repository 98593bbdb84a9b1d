"""Captions from a Hugging Face image-to-text model (BLIP, BLIP-2, GIT, ...) for data that has none, or too few.

The paper captions Imagenette with BLIP (§4) and trains its "blip" caption type on one caption per image, its MC
mitigation and partial duplication on 20 BLIP captions per image (§5.3.1, §7). Its code ships no captioning
script, so the model, the decoding and the number of captions are the project's choice (docs/caption.md).

Per image this module writes ``blip_captions``, a list whose first entry is the **deterministic** caption (beam
search or greedy decoding) and whose other ``n_sampled`` entries are **sampled** captions (nucleus sampling with
``top_p``, ``temperature`` and optionally ``top_k``).

Sampling is seeded per image and per caption: the token drawn at every step of sampled caption ``k`` of image
``image_id`` comes from its own generator, seeded by ``derive_seed(seed, "caption", image_id, k)``. Hugging Face's
``generate`` draws from one global generator for the whole batch, so the draw is done by :class:`SeededSampling`, a
logits processor that warps the scores with Hugging Face's own warpers (temperature, top-k, top-p), draws one token
per row from that row's generator and leaves only that token possible; ``generate``'s own sampling step then has
nothing left to choose. The captions of an image therefore do not depend on the batch it falls in, its position in
the batch or the row order (checked in tests/caption).

The model is a local folder (any ``save_pretrained`` layout) or a Hugging Face id already in the local cache;
nothing is downloaded. Its id, revision, model class and the sha256 of its weight files are recorded.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from copying_study.schemas.caption import CaptionParams
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.images import decode_image
from copying_study.utils.progress import progress
from copying_study.utils.seeding import numpy_rng

logger = logging.getLogger(__name__)

BLIP_COLUMN = "blip_captions"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DOCS = "docs/real-weights.md"


# ---------------------------------------------------------------------------------------------------------------
# the model


def resolve_model(model: str, revision: str | None = None) -> Path:
    """The local folder of ``caption.model``: the folder itself, or the snapshot of a Hugging Face id in the local
    cache (``revision``: a branch, tag or commit; default the cached ``main``). Nothing is downloaded; a model that
    is not there is a ``FileNotFoundError`` naming the parameter and pointing to the weights page."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"caption.model: folder '{path}' has no config.json, so it is not a Hugging Face "
                                    f"model folder (see {DOCS})")
        return path.resolve()
    parts = model.split("/")
    if len(parts) != 2 or not all(parts) or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"caption.model: folder '{path}' does not exist (and it is not a Hugging Face id "
                                f"of the form 'owner/name'); see {DOCS}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - anything from the hub client means: not available locally
        raise FileNotFoundError(
            f"caption.model={model!r} is not in the local Hugging Face cache ({type(exc).__name__}); nothing is downloaded at run time. Download it once on a machine with "
            f"internet (`huggingface-cli download {model}`) or point caption.model at a folder; see {DOCS}"
        ) from exc


def folder_revision(folder: Path) -> str | None:
    """The commit a model folder holds: the snapshot name inside the Hugging Face cache, or the commit that
    ``huggingface-cli download --local-dir`` wrote next to ``config.json``; ``None`` for a hand-made folder."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.name
    meta = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    first = meta.read_text().split("\n", 1)[0].strip() if meta.is_file() else ""
    return first or None


def weights_record(folder: Path) -> dict[str, Any]:
    """sha256 of every weight file of a model folder (``*.safetensors``, else ``*.bin``) and one sha256 over
    them all (file names and digests, in name order)."""
    from copying_study.descriptors.base import sha256_file

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".bin")
    if not files:
        raise FileNotFoundError(f"caption.model: no weight file ({' or '.join(WEIGHT_SUFFIXES)}) in '{folder}'")
    digests = {p.name: sha256_file(p) for p in files}
    combined = hashlib.sha256("".join(f"{n}\0{d}\n" for n, d in digests.items()).encode()).hexdigest()
    return {"weights_sha256": combined, "weight_files": digests}


def _model_classes() -> list[Any]:
    import transformers

    # ImageTextToText covers BLIP, BLIP-2, GIT, ... in transformers 5; Vision2Seq is its 4.x predecessor.
    names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")
    return [getattr(transformers, n) for n in names if hasattr(transformers, n)]


def load_model(folder: Path, dtype: torch.dtype) -> Any:
    """The image-to-text model in ``folder``; refuses a folder whose weights do not all fit the model (a silently
    re-initialised layer would caption with random weights)."""
    from copying_study.descriptors.hf import load_pretrained

    errors = []
    for cls in _model_classes():
        try:
            return load_pretrained(cls, folder, None, dtype)
        except ValueError as exc:
            if "does not fit" in str(exc):
                raise
            errors.append(f"{cls.__name__}: {exc}")
    raise ValueError(f"caption.model: the model in '{folder}' is not an image-to-text model that transformers can "
                     f"load for captioning ({'; '.join(errors)})")


# ---------------------------------------------------------------------------------------------------------------
# seeded sampling


class SeededSampling(LogitsProcessor):
    """A logits processor that samples one token per row from that row's own generator.

    ``rngs[r]`` is the generator of row ``r`` of the batch ``generate`` works on. The scores are warped by
    ``warpers`` (Hugging Face's temperature / top-k / top-p warpers), turned into probabilities, and the token is
    drawn by inverse CDF with one uniform number from ``rngs[r]``; every other token gets ``-inf``. Which token a
    row gets depends only on its own scores and generator, never on the other rows.
    """

    def __init__(self, rngs: Sequence[np.random.Generator], warpers: Any) -> None:
        self.rngs = list(rngs)
        self.warpers = warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.rngs):
            raise RuntimeError(f"SeededSampling got {scores.shape[0]} rows for {len(self.rngs)} generators")
        probs = torch.softmax(self.warpers(input_ids, scores).double(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        u = torch.tensor([r.random() for r in self.rngs], dtype=torch.float64, device=scores.device)
        picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
        # guard against rounding at the top of the cdf: never step past the last token with a non-zero probability
        last = probs.shape[1] - 1 - torch.argmax((probs.flip(1) > 0).to(torch.int8), dim=1, keepdim=True)
        picked = torch.minimum(picked, last)
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, picked, 0.0)


def _warpers(s: CaptionParams) -> Any:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if s.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k > 0:
        warpers.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        warpers.append(TopPLogitsWarper(s.top_p))
    return warpers


# ---------------------------------------------------------------------------------------------------------------
# captioning


class Captioner:
    """A loaded image-to-text model with its processor, captioning batches of encoded images.

    ``Captioner(settings, device)`` resolves and loads the model; :meth:`caption` returns ``1 + n_sampled``
    captions per image, deterministic first.
    """

    def __init__(self, settings: CaptionParams, device: str | torch.device = "auto") -> None:
        if settings.model is None:
            raise ValueError("caption.model is null: give a local image-to-text model folder or a cached Hugging "
                             f"Face id ({DOCS})")
        from transformers import AutoConfig, AutoProcessor

        self.settings = settings
        self.folder = resolve_model(settings.model, settings.revision)
        self.device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        half = settings.half if settings.half is not None else self.device.type == "cuda"
        self.dtype = torch.float16 if half else torch.float32
        config = AutoConfig.from_pretrained(str(self.folder), local_files_only=True)
        self.processor = AutoProcessor.from_pretrained(str(self.folder), local_files_only=True)
        self.model = load_model(self.folder, self.dtype).to(self.device).eval()
        self.record = {
            "model": settings.model,
            "model_path": str(self.folder),
            "revision": folder_revision(self.folder),
            "model_type": config.model_type,
            "model_class": type(self.model).__name__,
            **weights_record(self.folder),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": describe_device(self.device),
        }
        logger.info("captioning model %s (%s, %s) on %s", settings.model, self.record["model_class"],
                    self.record["revision"] or "no revision recorded", self.record["device"])

    def _inputs(self, images: list[Any]) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.settings.prompt:
            kwargs["text"] = [self.settings.prompt] * len(images)
        inputs = self.processor(**kwargs)
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    def _decode(self, ids: torch.Tensor) -> list[str]:
        texts = [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        prompt = (self.settings.prompt or "").strip().lower()
        if prompt:  # as BLIP's own code does: the caption is what the model adds after the prompt
            texts = [t[len(prompt):].strip() if t.lower().startswith(prompt) else t for t in texts]
        return texts

    @torch.no_grad()
    def _caption_batch(self, images: list[Any], keys: Sequence[str], seed: int) -> list[list[str]]:
        s = self.settings
        inputs = self._inputs(images)
        common = {"max_new_tokens": s.max_new_tokens, "min_new_tokens": s.min_new_tokens}
        beams = s.num_beams if s.decoding == "beam" else 1
        first = self._decode(self.model.generate(**inputs, do_sample=False, num_beams=beams,
                                                 repetition_penalty=s.repetition_penalty, **common))
        out = [[c] for c in first]
        if s.n_sampled:
            rngs = [numpy_rng(seed, "caption", key, k) for key in keys for k in range(s.n_sampled)]
            # generate's own sampling step only sees one possible token per row (SeededSampling chose it); its
            # draw still uses the global torch generator, which fork_rng restores afterwards.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                ids = self.model.generate(
                    **inputs, do_sample=True, num_beams=1, num_return_sequences=s.n_sampled, top_k=0, top_p=1.0,
                    temperature=1.0, repetition_penalty=s.sample_repetition_penalty,
                    logits_processor=LogitsProcessorList([SeededSampling(rngs, _warpers(s))]), **common,
                )
            sampled = self._decode(ids)
            for i in range(len(images)):
                out[i] += sampled[i * s.n_sampled:(i + 1) * s.n_sampled]
        return out

    def caption(self, images: Sequence[bytes], keys: Sequence[str], seed: int) -> list[list[str]]:
        """``1 + n_sampled`` captions for each encoded image (PNG/JPEG bytes); ``keys`` (the image ids) seed the
        sampled ones, so an image's captions do not depend on the other images."""
        if len(images) != len(keys):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        out: list[list[str]] = []
        bar = progress(total=len(images), desc="caption images", unit="img")
        try:
            for start in range(0, len(images), self.settings.batch_size):
                stop = start + self.settings.batch_size
                batch = [decode_image(b) for b in images[start:stop]]
                out += self._caption_batch(batch, [str(k) for k in keys[start:stop]], seed)
                bar.update(len(batch))
        finally:
            bar.close()
        return out


def has_requested_captions(table: pd.DataFrame, s: CaptionParams) -> bool:
    """Whether every row already carries at least ``1 + n_sampled`` ``blip_captions``."""
    if BLIP_COLUMN not in table.columns:
        return False
    return all(caps is not None and len(caps) >= s.per_image for caps in table[BLIP_COLUMN])


def caption_table(table: Any, s: CaptionParams, seed: int, device: str | torch.device = "auto"
                  ) -> tuple[Any, dict[str, Any]]:
    """``table`` with a ``blip_captions`` column (``1 + n_sampled`` captions per row, deterministic first) and a
    record of what made them; or ``table`` unchanged and a record saying why it was skipped.

    ``table`` is a DataFrame or ingest's streamed :class:`~copying_study.data.table.ChunkedTable`; a skipped one is
    returned as it is (never read into memory), a captioned one is read whole. Skipped when ``s.model`` is
    ``None`` or when every row already carries the requested captions. The model is resolved and loaded before any
    image is touched: a missing one fails at once.
    """
    if s.model is None:
        reason = "caption.model is null: no captioning model, the table passes through unchanged"
        logger.debug("caption: skipped (%s)", reason)
        return table, {"status": "skipped", "reason": reason, "n_images": len(table),
                       "captions_per_image": s.per_image, "generation": s.generation(), "model": None}
    if not isinstance(table, pd.DataFrame):
        from copying_study.diffusion.train import as_frame

        table = as_frame(table)
    for col in ("image_id", "image"):
        if col not in table.columns:
            raise ValueError(f"the table to caption lacks column {col!r}; it needs the training_set schema")
    record: dict[str, Any] = {"n_images": len(table), "captions_per_image": s.per_image,
                              "generation": s.generation(), "model": s.model}
    if s.model is None:
        reason = "caption.model is null: no captioning model, the table passes through unchanged"
    elif has_requested_captions(table, s):
        reason = (f"the table already carries {BLIP_COLUMN} with at least {s.per_image} captions per image; "
                  "they are kept")
    else:
        reason = None
    if reason is not None:
        logger.debug("caption: skipped (%s)", reason)
        return table, {"status": "skipped", "reason": reason, **record}
    captioner = Captioner(s, device)
    start = time.perf_counter()
    captions = captioner.caption(table["image"].tolist(), table["image_id"].astype(str).tolist(), seed)
    seconds = time.perf_counter() - start
    out = table.copy()
    out[BLIP_COLUMN] = captions
    empty = sum(1 for caps in captions for c in caps if not c)
    if empty:
        logger.warning("caption: %d of %d captions are empty (the model ended them at once)", empty,
                       len(captions) * s.per_image)
    replaced = BLIP_COLUMN in table.columns
    notes = [f"replaced the table's {BLIP_COLUMN}: some rows had fewer than {s.per_image}"] if replaced else []
    return out, {
        "status": "captioned", "reason": None, **record, **captioner.record, "seed": int(seed),
        "n_empty_captions": empty, "notes": notes,
        "checksums": {"caption_model": captioner.record["weights_sha256"]},
        "seconds": round(seconds, 3), "images_per_second": round(len(table) / seconds, 3) if seconds else None,
    }
