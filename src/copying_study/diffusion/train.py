"""Finetuning a text-to-image diffusion model under duplication, caption regimes and train-time mitigations.

The same loop trains the tiny embedded model on a CPU and Stable Diffusion 2.1 on GPUs (paper §4, §5.2, §5.3, §7):

* **data**: every image is resized (short edge) and center-cropped to ``resolution``, encoded **once** by the frozen
  autoencoder and cached on the device (both horizontal flips when ``random_flip`` is on);
* **sampling**: without duplication each epoch is a seeded permutation of the images (the paper's shuffle); with
  duplication a seeded ``dup_fraction`` of the images is drawn ``ddf`` times more often than the others, i.i.d. with
  replacement (the paper's ``WeightedRandomSampler``);
* **captions**: ``caption_type`` fixes the caption each image is trained with; ``duplication: partial`` draws the
  caption of a duplicated image from its alternatives every time it is drawn; a train-time ``mitigation`` (mc, gn,
  rc, rt, cwr, rna) then perturbs the caption (or, for gn, the text embedding);
* **objective**: DDPM noise at uniform timesteps, MSE on ε or v (the scheduler config's ``prediction_type``), AdamW
  (weight decay 1e-2), gradient clipping, constant learning rate after a linear warm-up;
* **determinism**: every random choice of step ``s`` (images, flips, captions, caption dropout, timesteps, noise)
  is drawn from generators seeded by ``(seed, s)``, so a run resumed from a checkpoint draws exactly what the
  uninterrupted run drew and ends with the same weights;
* **speed**: bf16 autocast and SDPA attention on CUDA, optional gradient checkpointing and ``torch.compile``;
  several GPUs through ``accelerate launch`` (each process trains on its slice of every global batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from copying_study.data import captions as cap
from copying_study.diffusion.detection import epsilon_factor, loss_mask, text_conditional_norm
from copying_study.diffusion.models import (
    add_embedding_noise,
    describe_pipeline,
    encode_prompts,
    load_pipeline,
    resolve_source,
    weights_checksum,
)
from copying_study.schemas.finetune import FinetuneParams
from copying_study.utils.device import describe_device
from copying_study.utils.images import decode_image, resize_center_crop
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed, numpy_rng, python_rng, torch_generator

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_id", "image", "caption")


# ---------------------------------------------------------------------------------------------------------------
# the training plan: what every image is trained with, which are duplicated, how often each is drawn


@dataclass
class TrainingPlan:
    """Everything decided before training: per-image base captions and alternatives, the vocabulary for random
    words, the duplicated images and the sampling probabilities."""

    image_ids: list[str]
    base_captions: list[str]
    alternatives: list[list[str]]
    vocabulary: list[str]
    duplicated: np.ndarray  # bool [N]
    probabilities: np.ndarray | None  # None = uniform epochs (no duplication)
    notes: list[str] = field(default_factory=list)  # fallbacks and ignored settings (also logged as warnings)

    @property
    def duplicated_ids(self) -> list[str]:
        return [i for i, d in zip(self.image_ids, self.duplicated, strict=True) if d]

    def caption_of(self) -> dict[str, str]:
        return dict(zip(self.image_ids, self.base_captions, strict=True))


def as_frame(table: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame or an iterable of DataFrame chunks (a streaming table)."""
    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_frame"):
        return table.to_frame()
    chunks = list(table)
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()


def check_captions(s: FinetuneParams, ids: list[str], rows: list[dict[str, Any]], pools: list[list[str]]) -> None:
    """``ValueError`` before any work when the settings need captions the data lacks. ``original`` needs each image's
    own caption; ``blip``, ``mc`` and ``partial`` duplication need its caption pool (own captions and the caption
    stage's ``blip_captions``). Uncaptioned data (a ``classfolders`` source without captions) trains with ``fixed``,
    ``class`` or ``random`` captions, or with model captions from ingest's captioning step (``caption.model``)."""
    own = [bool(cap.captions_of(r)) for r in rows]
    pooled = [bool(p) for p in pools]
    with_model = "or add model captions with caption.model (docs/caption.md)"
    needs = []
    if s.caption_type == "original":
        needs.append(("finetune.caption_type 'original' trains each image with its own caption", own,
                      "use caption_type fixed, class or random, or blip with model captions from caption.model "
                      "(docs/caption.md)"))
    if s.caption_type == "blip":
        needs.append(("finetune.caption_type 'blip' trains each image with its BLIP caption (blip_captions, else "
                      "its second caption)", pooled, f"use caption_type fixed, class or random, {with_model}"))
    if s.mitigation == "mc":
        needs.append(("finetune.mitigation 'mc' draws each image's caption from its captions", pooled,
                      f"use another mitigation, {with_model}"))
    if s.duplication == "partial":
        needs.append(("finetune.duplication 'partial' draws duplicated images' captions from their captions", pooled,
                      f"use full duplication, {with_model}"))
    for need, has, hint in needs:
        lacking = [i for i, ok in zip(ids, has, strict=True) if not ok]
        if lacking:
            what = ("the data has no captions (a classfolders source without captions_file?)" if len(lacking) == len(ids)
                    else f"{len(lacking)} of {len(ids)} images have no caption (e.g. {lacking[:3]})")
            raise ValueError(f"{need}, but {what}: {hint}")


def make_plan(table: pd.DataFrame, s: FinetuneParams, seed: int) -> TrainingPlan:
    """Validate the finetune set and decide captions and duplication (seeded, independent of row order)."""
    if table is None or len(table) == 0:
        raise ValueError("finetune_set is empty: there is nothing to train on (check the ingest/dedup outputs)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"finetune_set lacks column(s) {missing}; it needs the training_set schema")
    ids = [str(i) for i in table["image_id"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ValueError(f"finetune_set has repeated image_id(s) {dupes[:5]}: ids must be unique")
    rows = table.to_dict("records")
    alts = [cap.caption_pool(r) for r in rows]  # own captions + model captions; [] for an uncaptioned image
    check_captions(s, ids, rows, alts)
    blips = [list(r["blip_captions"]) for r in rows if r.get("blip_captions") is not None]
    vocab, vocab_note = cap.word_pool([c for a in alts for c in a] + [c for b in blips for c in b])
    random_of = (
        cap.random_captions(ids, vocab, seed, s.random_caption_words) if s.caption_type == "random" else None
    )
    base = [cap.base_caption(r, s.caption_type, random_of) for r in rows]
    n = len(ids)
    duplicated = np.zeros(n, dtype=bool)
    probabilities = None
    notes: list[str] = []
    if s.duplication != "none":
        k = max(1, round(s.dup_fraction * n))
        order = np.argsort(np.asarray(ids))  # choose on sorted ids: the same images whatever the row order
        chosen = numpy_rng(seed, "finetune", "duplicated").choice(n, size=k, replace=False)
        duplicated[order[chosen]] = True
        weights = np.where(duplicated, s.ddf, 1.0)
        probabilities = weights / weights.sum()
    elif s.ddf != 1.0:
        notes.append(f"finetune.ddf={s.ddf} is ignored: duplication is 'none'")
    if vocab_note and (s.caption_type == "random" or s.mitigation in ("rt", "rc")):
        notes.append(vocab_note)
    if s.caption_type == "blip" and not blips:
        notes.append("caption_type 'blip': the data has no blip_captions column; each image's second alternative "
                     "caption stands in for its BLIP caption")
    if s.tiny and s.base_model != "tiny":
        notes.append(f"finetune.tiny sizes are ignored: base_model is {s.base_model!r}, not 'tiny'")
    if s.embedded_base and s.base_model != "embedded":
        notes.append(f"finetune.embedded_base is ignored: base_model is {s.base_model!r}, not 'embedded'")
    for note in notes:
        logger.warning(note)
    return TrainingPlan(ids, base, alts, vocab, duplicated, probabilities, notes)


# ---------------------------------------------------------------------------------------------------------------
# what one step draws


@dataclass
class StepBatch:
    """What the model is fed at one step (before the text encoder): the observer hook receives it together with
    the conditioning embeddings the UNet saw."""

    step: int
    indices: np.ndarray
    image_ids: list[str]
    flips: np.ndarray
    captions: list[str]


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return numpy_rng(seed, "finetune", "epoch", epoch).permutation(n)


def draw_indices(plan: TrainingPlan, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The images of step ``step`` (0-based): seeded epoch permutations, or weighted i.i.d. draws with duplication."""
    n = len(plan.image_ids)
    if plan.probabilities is None:
        k = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs, positions = k // n, k % n
        return np.array([_epoch_permutation(seed, int(e), n)[p] for e, p in zip(epochs, positions, strict=True)])
    return numpy_rng(seed, "finetune", "batch", step).choice(n, size=batch_size, replace=True, p=plan.probabilities)


def draw_captions(plan: TrainingPlan, s: FinetuneParams, indices: np.ndarray, rng: random.Random) -> list[str]:
    """The caption of each drawn image: its base caption (or, partial duplication, one of its alternatives), then
    the text mitigation, then caption dropout (``uncond_prob``: the empty caption, for classifier-free guidance)."""
    out = []
    for i in indices:
        caption = plan.base_captions[i]
        if s.duplication == "partial" and plan.duplicated[i]:
            caption = rng.choice(plan.alternatives[i])
        caption = cap.perturb_caption(
            caption, s.mitigation, rng, vocab=plan.vocabulary, alternatives_=plan.alternatives[i],
            p=s.mitigation_prob, n=s.mitigation_insertions, rc_words=s.rc_words, rna_high=s.rna_high,
        )
        if s.uncond_prob > 0 and rng.random() < s.uncond_prob:
            caption = ""
        out.append(caption)
    return out


def draw_step(plan: TrainingPlan, s: FinetuneParams, step: int, seed: int) -> StepBatch:
    """Images, flips and captions of one step, drawn from generators seeded by ``(seed, step)``."""
    indices = draw_indices(plan, step, s.batch_size, seed)
    flips = (
        numpy_rng(seed, "finetune", "flip", step).integers(0, 2, size=len(indices))
        if s.random_flip else np.zeros(len(indices), dtype=np.int64)
    )
    captions = draw_captions(plan, s, indices, python_rng(seed, "finetune", "captions", step))
    return StepBatch(step, indices, [plan.image_ids[i] for i in indices], flips, captions)


# ---------------------------------------------------------------------------------------------------------------
# latents


def image_tensor(data: bytes, resolution: int) -> torch.Tensor:
    """PNG/JPEG bytes → ``[3, R, R]`` float in [-1, 1] (short edge resized, center crop; the paper's transform)."""
    img = resize_center_crop(decode_image(data), resolution)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_latents(pipe, images: Sequence[bytes], resolution: int, random_flip: bool, device: torch.device,
                   batch_size: int = 16, image_ids: Sequence[str] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode every image once with the frozen autoencoder: mean (and std when the autoencoder is stochastic) of
    the scaled latents, ``[N, F, C, h, w]`` with ``F`` = 2 flips (or 1). An image that cannot be decoded is a
    ``ValueError`` naming its ``image_id`` (or its row)."""
    vae = pipe.vae
    scale = float(vae.config.scaling_factor)
    flips = 2 if random_flip else 1
    means, stds = [], []

    def tensor(i: int) -> torch.Tensor:
        try:
            return image_tensor(images[i], resolution)
        except ValueError as exc:
            which = f"image_id '{image_ids[i]}'" if image_ids is not None else f"row {i}"
            raise ValueError(f"finetune_set {which} cannot be decoded: {exc}") from exc

    for start in progress(range(0, len(images), batch_size), desc="encode latents", unit="batch"):
        x = torch.stack([tensor(i) for i in range(start, min(start + batch_size, len(images)))])
        views = [x, torch.flip(x, dims=[3])][:flips]
        batch = torch.cat(views).to(device=device, dtype=vae.dtype)
        dist = vae.encode(batch).latent_dist
        m, sd = dist.mean.float() * scale, dist.std.float() * scale
        n = x.shape[0]
        means.append(torch.stack(m.split(n), dim=1))
        stds.append(torch.stack(sd.split(n), dim=1))
    mean, std = torch.cat(means), torch.cat(stds)
    return mean, (std if bool((std > 0).any()) else None)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


def fingerprint(s: FinetuneParams, seed: int, plan: TrainingPlan, table: pd.DataFrame, base_checksum: str) -> str:
    """A hash of everything that decides the trained weights (settings, seed, data, base model)."""
    settings = {k: v for k, v in s.to_dict().items() if k not in FinetuneParams.NON_SEMANTIC}
    h = hashlib.sha256(json.dumps({"settings": settings, "seed": seed, "base": base_checksum},
                                  sort_keys=True, default=str).encode())
    sha = table["sha256"] if "sha256" in table.columns else [hashlib.sha256(b).hexdigest() for b in table["image"]]
    for i, digest, c, a in zip(plan.image_ids, sha, plan.base_captions, plan.alternatives, strict=True):
        h.update(json.dumps([i, str(digest), c, a]).encode())
    return h.hexdigest()


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("step_*.pt")) if folder.exists() else []


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>.pt`` atomically (a temporary file named by process and a random id, then a rename) and
    keep the newest ``keep`` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:09d}.pt"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in _checkpoint_files(folder)[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    files = _checkpoint_files(folder)
    return files[-1] if files else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """What :func:`train` returns: the finetuned pipeline and its provenance."""

    pipe: Any
    plan: TrainingPlan
    loss_history: list[list[float]]  # [[step, mean loss over the logging window], ...]
    lr_history: list[list[float]]
    throughput_history: list[list[float]]  # [[step, steps/s, images/s over the logging window], ...]
    wen_left_out: int | None  # samples the wen mitigation left out of the loss (None: another mitigation)
    wen_threshold: float | None  # the threshold it applied (given, or the calibrated quantile)
    wen_left_out_duplicated: int | None  # of wen_left_out: samples of duplicated images
    sample_grids: dict[int, np.ndarray]  # step -> uint8 [H, W, 3]
    samples_per_image: np.ndarray  # how often each image was drawn
    seconds: float
    samples_per_s: float
    steps_run: int
    resumed_from: int | None
    resumed_checkpoint: str | None  # the checkpoint file training continued from
    base_checksum: str
    final_checksum: str
    components: dict[str, Any]
    device: str
    precision: str
    fingerprint: str
    base: dict[str, Any] = field(default_factory=dict)  # what the base model was (embedded: fingerprint, built now)


def _mixed_precision(s: FinetuneParams, device: torch.device) -> torch.dtype | None:
    mp = s.mixed_precision
    if mp == "auto":
        mp = "bf16" if device.type == "cuda" else "no"
    if mp == "no":
        return None
    if device.type != "cuda":
        raise ValueError(f"finetune.mixed_precision={mp} needs a CUDA device (this run uses {device}); use no or auto")
    return torch.bfloat16 if mp == "bf16" else torch.float16


def _wen_scores(pipe, text_encoder, unet_fwd, noisy: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor,
                pred: torch.Tensor, noise_scheduler, prediction_type: str, device: torch.device) -> torch.Tensor:
    """Wen et al.'s training-time mitigation: each sample's detection score (the L2 norm of its text-conditional
    noise prediction, ``copying_study.diffusion.detection``, one extra UNet call without gradients on the empty
    caption); a sample scoring above the threshold is left out of the loss (``detection.loss_mask``)."""
    with torch.no_grad():
        empty = encode_prompts(pipe, [""], device, text_encoder).expand_as(emb)
        uncond = unet_fwd(noisy, timesteps, encoder_hidden_states=empty, return_dict=False)[0]
        alpha_bar = noise_scheduler.alphas_cumprod.to(device)[timesteps]
        return text_conditional_norm(uncond, pred.detach(), epsilon_factor(prediction_type, alpha_bar)).to(device)


def _wen_total(left_out: torch.Tensor, accelerator) -> float:
    """Samples left out so far, summed over the processes (for the checkpoint; every process calls it)."""
    return float(accelerator.reduce(left_out.clone(), reduction="sum")) if accelerator is not None else float(left_out)


def wen_calibrated_threshold(scores: list[torch.Tensor], quantile: float) -> float:
    """The threshold of ``finetune.wen_quantile``: that quantile (numpy's linear rule, in float64) of every score
    recorded during the calibration steps."""
    values = np.concatenate([t.detach().reshape(-1).cpu().double().numpy() for t in scores]) if scores else []
    if len(values) == 0:
        raise ValueError("finetune.wen_quantile: no detection score was recorded during the calibration steps")
    return float(np.quantile(values, quantile))


def resolve_base(s: FinetuneParams, device: torch.device) -> tuple[str, dict[str, Any]]:
    """The model source to load and what it is: ``embedded`` becomes the cached pretrained base model's folder
    (built now when missing, :func:`copying_study.diffusion.base.ensure_base`); anything else is checked as it is
    (a missing folder or an uncached id fails before any work)."""
    if s.base_model == "embedded":
        from copying_study.diffusion.base import ensure_base

        folder, record, built = ensure_base(s.embedded_base, s.embedded_base_dir, device)
        info = {"source": "embedded", "folder": str(folder), "fingerprint": record["fingerprint"],
                "built_now": built, "weights_checksum": record["weights_checksum"], "spec": record["spec"],
                "pretraining_seconds": record.get("seconds"), "pretraining_final_loss": record.get("final_loss")}
        return str(folder), info
    kind, where = resolve_source(s.base_model)
    return s.base_model, {"source": kind, "location": where}


def prepare_model(s: FinetuneParams, plan: TrainingPlan, seed: int, device: torch.device,
                  source: str | None = None):
    """Load the base model (``source``, default ``s.base_model``)."""
    source = source or s.base_model
    resolve_source(source)
    captions_seen = sorted({c for a in plan.alternatives for c in a} | set(plan.base_captions))
    pipe = load_pipeline(source, captions=captions_seen, resolution=s.resolution, seed=seed, **s.tiny)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe


def _distributed():
    """An ``accelerate.Accelerator`` when launched on several processes (``accelerate launch``), else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator()


def train(
    table: pd.DataFrame,
    s: FinetuneParams,
    seed: int,
    device: torch.device,
    observer: Callable[[StepBatch, torch.Tensor], None] | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Finetune ``s.base_model`` on ``table`` (the ``finetune_set``). Returns the trained pipeline and its record.

    ``observer(batch, encoder_hidden_states)`` is called at every step with what the UNet is about to be fed (for
    tests and diagnostics); an exception it raises stops training (the last checkpoint stays resumable).

    Checkpoints go to ``checkpoint_dir/<run_id>/<fingerprint>`` and are removed when training completes. They are
    resumed automatically (``resume``) only by the same run (``run_id``: the Kedro run id; ``None`` gives a fresh id,
    so nothing is resumed); any other run resumes a checkpoint only when ``resume_from`` names it, and only if it
    was written with the same settings, seed, data and base model (the fingerprint).
    """
    table = as_frame(table)
    plan = make_plan(table, s, seed)
    accelerator = _distributed()
    if accelerator is not None:
        device = accelerator.device
    amp = _mixed_precision(s, device)
    source, base_info = resolve_base(s, device)
    pipe = prepare_model(s, plan, seed, device, source)
    unet, text_encoder, vae = pipe.unet, pipe.text_encoder, pipe.vae
    base_checksum = weights_checksum(unet, text_encoder)
    fp = fingerprint(s, seed, plan, table, base_checksum)

    vae.requires_grad_(False)
    text_encoder.requires_grad_(s.train_text_encoder)
    unet.requires_grad_(True)
    unet.train()
    text_encoder.train(s.train_text_encoder)
    if s.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if s.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()

    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")
    n_timesteps = int(noise_scheduler.config.num_train_timesteps)

    t0 = time.perf_counter()
    mean_latents, std_latents = encode_latents(pipe, list(table["image"]), s.resolution, s.random_flip, device,
                                               image_ids=plan.image_ids)
    encode_seconds = time.perf_counter() - t0

    params = list(unet.parameters()) + (list(text_encoder.parameters()) if s.train_text_encoder else [])
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, betas=(s.adam_beta1, s.adam_beta2),
                                  weight_decay=s.weight_decay, eps=s.adam_epsilon, fused=True)
    lr_scheduler = get_scheduler(s.lr_schedule, optimizer, num_warmup_steps=s.lr_warmup_steps,
                                 num_training_steps=s.steps)
    unet_fwd = torch.compile(unet) if s.compile else unet
    if accelerator is not None:
        unet_fwd, optimizer = accelerator.prepare(unet_fwd, optimizer)
        if s.train_text_encoder:
            text_encoder = accelerator.prepare(text_encoder)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if s.batch_size % world:
        raise ValueError(f"finetune.batch_size={s.batch_size} is not divisible by the {world} processes")
    is_main = rank == 0

    run_folder = Path(s.checkpoint_dir) / (run_id or f"run-{uuid.uuid4().hex[:12]}")
    ckpt_dir = run_folder / fp[:16]
    start_step, resumed_from = 0, None
    counts = np.zeros(len(plan.image_ids), dtype=np.int64)
    step_losses: list[float] = []
    loss_history: list[list[float]] = []
    lr_history: list[list[float]] = []
    throughput_history: list[list[float]] = []
    sample_grids: dict[int, np.ndarray] = {}
    if s.resume_from:
        last: Path | None = Path(s.resume_from).expanduser()
        if not last.is_file():
            raise FileNotFoundError(f"finetune.resume_from: no checkpoint file at {last}")
    else:
        last = latest_checkpoint(ckpt_dir) if s.checkpoint_every and s.resume else None
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["fingerprint"] != fp:
            raise ValueError(f"checkpoint {last} was written by a run with other settings, seed, data or base model "
                             "(fingerprint mismatch): this run cannot resume from it")
        _unwrap(unet_fwd).load_state_dict(state["unet"])
        if s.train_text_encoder:
            _unwrap(text_encoder).load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        _set_rng_state(state["rng"])
        start_step = resumed_from = int(state["step"])
        counts = state["counts"]
        step_losses, loss_history, lr_history = state["step_losses"], state["loss_history"], state["lr_history"]
        sample_grids = state["sample_grids"]
        throughput_history = state.get("throughput_history", [])
        logger.info("resuming finetuning from %s (step %d of %d)", last, start_step, s.steps)
    if s.checkpoint_every and is_main:
        logger.debug("checkpoints of this run: %s (removed when training completes; resume a stopped run with "
                    "--params finetune.resume_from=%s/step_<n>.pt)", ckpt_dir, ckpt_dir)

    grid_rows = _grid_prompts(plan, s.sample_prompts)
    wen_left_out = torch.zeros((), device=device)  # samples the wen mitigation left out of the loss (this process)
    wen_left_out_dup = torch.zeros((), device=device)  # of which samples of duplicated images
    duplicated = torch.as_tensor(np.asarray(plan.duplicated, dtype=np.float32), device=device)
    # wen_quantile: every sample is kept during the first wen_calibration_steps steps and its score recorded (from
    # every process); the threshold is then that quantile of the recorded scores
    wen_threshold, wen_calibration = s.wen_threshold, []
    if last is not None and s.mitigation == "wen":
        wen_left_out = torch.as_tensor(float(state.get("wen_left_out") or 0.0), device=device) / world
        wen_left_out_dup = torch.as_tensor(float(state.get("wen_left_out_duplicated") or 0.0), device=device) / world
        if s.wen_quantile is not None:
            wen_threshold = state.get("wen_threshold")
            wen_calibration = [t.to(device) for t in state.get("wen_calibration", [])]
    pending: list[torch.Tensor] = []  # losses not yet copied to the host (one sync per log/checkpoint, not per step)
    t_train = time.perf_counter()
    # throughput over each logging window, without the time spent on sample grids and checkpoints
    t_window, window_start, paused = t_train, start_step, 0.0
    bar = progress(range(start_step, s.steps), desc="finetune", total=s.steps - start_step, unit="step")
    for step in bar:
        batch = draw_step(plan, s, step, seed)
        np.add.at(counts, batch.indices, 1)
        local = slice(rank * s.batch_size // world, (rank + 1) * s.batch_size // world)
        idx = torch.as_tensor(batch.indices[local], device=device)
        flip = torch.as_tensor(batch.flips[local], device=device)
        gen = torch_generator(derive_seed(seed, "finetune", "noise", step))
        latents = mean_latents[idx, flip]
        shape = (s.batch_size, *latents.shape[1:])
        noise = torch.randn(shape, generator=gen)[local].to(device)
        timesteps = torch.randint(0, n_timesteps, (s.batch_size,), generator=gen)[local].to(device)
        if std_latents is not None:
            latents = latents + std_latents[idx, flip] * torch.randn(shape, generator=gen)[local].to(device)
        gn_gen = torch_generator(derive_seed(seed, "finetune", "gn", step))

        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            with torch.set_grad_enabled(s.train_text_encoder):
                emb = encode_prompts(pipe, batch.captions, device, text_encoder)
            if s.mitigation == "gn":
                emb = add_embedding_noise(emb, s.gn_lambda, gn_gen)
            emb = emb[local]
            if observer is not None:
                observer(batch, emb)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
            pred = unet_fwd(noisy, timesteps, encoder_hidden_states=emb, return_dict=False)[0]
            if s.mitigation == "wen":
                scores = _wen_scores(pipe, text_encoder, unet_fwd, noisy, timesteps, emb, pred, noise_scheduler,
                                     prediction_type, device)
        if s.mitigation == "wen":  # Wen et al.: samples with a high detection score are left out of the loss
            if wen_threshold is None:  # calibrating: every sample is kept, its score recorded
                keep = torch.ones_like(scores, dtype=torch.float32)
                wen_calibration.append(accelerator.gather(scores) if accelerator is not None else scores)
                if step + 1 == s.wen_calibration_steps:
                    wen_threshold = wen_calibrated_threshold(wen_calibration, s.wen_quantile)
                    logger.info("wen: threshold %.6g, the %.3g quantile of %d detection scores of the first %d "
                                "steps", wen_threshold, s.wen_quantile, sum(t.numel() for t in wen_calibration),
                                s.wen_calibration_steps)
            else:
                keep = loss_mask(scores, wen_threshold).to(device)
            per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
            loss = (per_sample * keep).sum() / keep.sum().clamp(min=1.0)
            wen_left_out = wen_left_out + (keep.numel() - keep.sum())
            wen_left_out_dup = wen_left_out_dup + ((1.0 - keep) * duplicated[idx]).sum()
        else:
            loss = F.mse_loss(pred.float(), target.float())
        if accelerator is not None:
            accelerator.backward(loss)
            if s.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, s.max_grad_norm)
            pending.append(accelerator.reduce(loss.detach(), reduction="mean"))
        else:
            loss.backward()
            if s.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            pending.append(loss.detach())
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        logging_now = done % s.log_every == 0 or done == s.steps
        checkpoint_step = bool(s.checkpoint_every) and done % s.checkpoint_every == 0 and done < s.steps
        checkpoint_now = is_main and checkpoint_step
        if logging_now or checkpoint_now:
            step_losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()
        if logging_now:
            window = step_losses[-(done - (int(loss_history[-1][0]) if loss_history else 0)):]
            loss_history.append([done, float(np.mean(window))])
            lr_history.append([done, float(lr_scheduler.get_last_lr()[0])])
            now = time.perf_counter()
            elapsed = max(now - t_window - paused, 1e-9)
            throughput_history.append([done, (done - window_start) / elapsed,
                                       (done - window_start) * s.batch_size / elapsed])
            t_window, window_start, paused = now, done, 0.0
        t_aside = time.perf_counter()
        if is_main and s.sample_every and (done % s.sample_every == 0 or done == s.steps):
            sample_grids[done] = sample_grid(pipe, table, plan, grid_rows, s, seed, device, amp)
        wen_so_far = ((_wen_total(wen_left_out, accelerator), _wen_total(wen_left_out_dup, accelerator))
                      if s.mitigation == "wen" and checkpoint_step else (None, None))  # every process reduces
        if checkpoint_now:
            save_checkpoint(ckpt_dir, done, {
                "fingerprint": fp, "step": done, "unet": _unwrap(unet_fwd).state_dict(),
                "text_encoder": _unwrap(text_encoder).state_dict() if s.train_text_encoder else None,
                "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "rng": _rng_state(), "counts": counts, "step_losses": step_losses,
                "loss_history": loss_history, "lr_history": lr_history, "sample_grids": sample_grids,
                "throughput_history": throughput_history,
                "wen_threshold": wen_threshold, "wen_calibration": [t.cpu() for t in wen_calibration],
                "wen_left_out": wen_so_far[0], "wen_left_out_duplicated": wen_so_far[1],
            }, s.keep_checkpoints)
        paused += time.perf_counter() - t_aside
    seconds = time.perf_counter() - t_train
    steps_run = s.steps - start_step
    if accelerator is not None and s.mitigation == "wen":
        wen_left_out = accelerator.reduce(wen_left_out, reduction="sum")
        wen_left_out_dup = accelerator.reduce(wen_left_out_dup, reduction="sum")
    if accelerator is not None:
        accelerator.wait_for_everyone()
        pipe.unet = accelerator.unwrap_model(unet_fwd)
        pipe.text_encoder = accelerator.unwrap_model(text_encoder)
    unet.eval()
    pipe.text_encoder.eval()
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    final = weights_checksum(pipe.unet, pipe.text_encoder)
    if is_main and ckpt_dir.exists():  # training is complete: its checkpoints are no longer needed
        shutil.rmtree(ckpt_dir)
        if not any(run_folder.iterdir()):
            run_folder.rmdir()
    if s.sample_every == 0 and s.sample_prompts and is_main:
        sample_grids[s.steps] = sample_grid(pipe, table, plan, grid_rows, s, seed, device, amp)
    logger.info("finetuned %d steps in %.1f s (%.1f samples/s; latents encoded in %.1f s)",
                steps_run, seconds, steps_run * s.batch_size / max(seconds, 1e-9), encode_seconds)
    return TrainResult(
        pipe=pipe, plan=plan, loss_history=loss_history, lr_history=lr_history,
        throughput_history=throughput_history, sample_grids=sample_grids,
        wen_left_out=int(round(float(wen_left_out))) if s.mitigation == "wen" else None,
        wen_threshold=wen_threshold if s.mitigation == "wen" else None,
        wen_left_out_duplicated=int(round(float(wen_left_out_dup))) if s.mitigation == "wen" else None,
        samples_per_image=counts, seconds=seconds,
        samples_per_s=steps_run * s.batch_size / max(seconds, 1e-9), steps_run=steps_run,
        resumed_from=resumed_from, resumed_checkpoint=str(last) if last is not None else None,
        base_checksum=base_checksum, final_checksum=final,
        components=describe_pipeline(pipe) | {"base_model": s.base_model, "attention": _attention(pipe.unet)},
        device=describe_device(device), precision=str(amp).replace("torch.", "") if amp else "float32",
        fingerprint=fp, base=base_info,
    )


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module behind ``torch.compile`` / DDP wrappers (whose state-dict keys would carry prefixes)."""
    while True:
        inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        if inner is None:
            return module
        module = inner


def _attention(unet) -> str:
    procs = {type(p).__name__ for p in unet.attn_processors.values()}
    return ",".join(sorted(procs)) or "none"


# ---------------------------------------------------------------------------------------------------------------
# sample grids


def _grid_prompts(plan: TrainingPlan, k: int) -> list[int]:
    """Rows for the sample grid: up to ``k // 2`` duplicated images first, then non-duplicated ones (sorted ids)."""
    order = np.argsort(np.asarray(plan.image_ids))
    dup = [int(i) for i in order if plan.duplicated[i]][: k // 2 if plan.duplicated.any() else 0]
    rest = [int(i) for i in order if not plan.duplicated[i]]
    return (dup + rest)[:k]


@torch.no_grad()
def sample_grid(pipe, table: pd.DataFrame, plan: TrainingPlan, rows: list[int], s: FinetuneParams, seed: int,
                device: torch.device, amp: torch.dtype | None) -> np.ndarray:
    """A uint8 grid: one row per prompt, the training image then two generations from its training caption."""
    if not rows:
        return np.zeros((s.resolution, s.resolution, 3), dtype=np.uint8)
    was_training = pipe.unet.training
    pipe.unet.eval()
    prompts = [plan.base_captions[r] for r in rows]
    gen = torch_generator(derive_seed(seed, "finetune", "sample_grid"))
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        images = pipe(
            prompts, num_images_per_prompt=2, num_inference_steps=s.sample_steps, guidance_scale=s.sample_guidance,
            generator=gen, height=s.resolution, width=s.resolution, output_type="np",
        ).images
    pipe.unet.train(was_training)
    tiles = []
    for j, r in enumerate(rows):
        ref = (image_tensor(table["image"].iloc[r], s.resolution).permute(1, 2, 0).numpy() + 1) / 2
        tiles.append(np.concatenate([ref, images[2 * j], images[2 * j + 1]], axis=1))
    return (np.clip(np.concatenate(tiles, axis=0), 0, 1) * 255).round().astype(np.uint8)


def training_record(result: TrainResult, table: pd.DataFrame, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The JSON record of a finetuning run (see docs/finetune.md for every key)."""
    plan = result.plan
    dup = plan.duplicated
    counts = result.samples_per_image
    labels = table["class_label"].dropna().astype(str).unique().tolist() if "class_label" in table.columns else []
    return {
        "settings": params,
        "seed": int(seed),
        "base_model": params["base_model"],
        "base": result.base,
        "caption_type": params["caption_type"],
        "duplication": params["duplication"],
        "ddf": params["ddf"] if params["duplication"] != "none" else 1.0,
        "mitigation": params["mitigation"],
        "train_text_encoder": params["train_text_encoder"],
        "captions": plan.caption_of(),
        "vocabulary": plan.vocabulary,
        "class_labels": sorted(labels),
        "duplicated_ids": plan.duplicated_ids,
        "n_images": len(plan.image_ids),
        "samples_drawn": {
            "duplicated_per_image": float(counts[dup].mean()) if dup.any() else None,
            "other_per_image": float(counts[~dup].mean()) if (~dup).any() else None,
            "total": int(counts.sum()),
        },
        "steps": int(params["steps"]),
        "steps_run": int(result.steps_run),
        "resumed_from_step": result.resumed_from,
        "resumed_from_checkpoint": result.resumed_checkpoint,
        "seconds": round(result.seconds, 3),
        "samples_per_s": round(result.samples_per_s, 3),
        "device": result.device,
        "precision": result.precision,
        "checksums": {"base": result.base_checksum, "finetuned": result.final_checksum},
        "run_fingerprint": result.fingerprint,
        "components": result.components,
        "fallbacks": plan.notes,
        "final_loss": result.loss_history[-1][1] if result.loss_history else None,
        "wen": None if result.wen_left_out is None else {
            "threshold": result.wen_threshold, "threshold_given": params.get("wen_threshold"),
            "quantile": params.get("wen_quantile"),
            "calibration_steps": params.get("wen_calibration_steps") if params.get("wen_quantile") else None,
            "samples_left_out": result.wen_left_out,
            "duplicated_samples_left_out": result.wen_left_out_duplicated,
            "share_of_duplicated_samples_left_out": (result.wen_left_out_duplicated / max(1, int(counts[dup].sum()))
                                                     if dup.any() else None),
            "share_of_other_samples_left_out": ((result.wen_left_out - result.wen_left_out_duplicated)
                                                / max(1, int(counts[~dup].sum())) if (~dup).any() else None),
            "share_left_out": result.wen_left_out / max(1, int(counts.sum()))},
    }


def training_metrics(result: TrainResult) -> dict[str, Any]:
    """The ``finetune_metrics`` of a run: loss and learning-rate histories and the throughput as
    ``[[step, value], ...]``, samples/s and seconds."""
    return {
        "train_loss": result.loss_history,
        "learning_rate": result.lr_history,
        # training throughput as stepped metrics beside the loss (timings: the audit skips them)
        "steps_per_s": [[step, sps] for step, sps, _ in result.throughput_history],
        "images_per_s": [[step, ips] for step, _, ips in result.throughput_history],
        "samples_per_s": result.samples_per_s,
        "train_seconds": result.seconds,
    }
