"""The embedded base model: the counterpart, for the embedded study, of Stable Diffusion's LAION pretraining.

The paper finetunes a *pretrained* Stable Diffusion 2.1 on small data sets, and copying emerges during that
finetuning. The embedded study does the same at toy scale: a tiny text-to-image model — a KL autoencoder
(:mod:`copying_study.diffusion.autoencoder`), a CLIP text encoder with a BPE tokenizer and a UNet, the components
of SD — is pretrained **once** on a *generic* embedded set (scenes of the embedded generator drawn from a seed of
their own, :data:`BASE_SEED`, never the study's scenes), and every finetune of the study starts from it
(``finetune.base_model: embedded``).

The build is deterministic on a given device (same spec, same library versions -> the same bytes), and it is
**cached like any model**: under ``<cache>/<fingerprint>/`` where the fingerprint is a sha256 of the spec, the
format version, the device type and the torch/diffusers versions; ``base_record.json`` beside the weights says
what was built, from what, how long it took and its weights checksum. A build is written to a unique temporary
folder and renamed into place, so an interrupted or concurrent build never leaves a half-written base that a
later run would load. ``copying-study build-base`` builds it ahead of time (``scripts/setup.sh`` does), and a
finetune that needs it builds it when it is missing, with a WARNING that says so and how long it takes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from copying_study.utils.seeding import derive_seed

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
BASE_FORMAT = 1  # bump when the build procedure changes what it produces
BASE_SEED = derive_seed(20231119, "embedded_base")
DEFAULT_CACHE = "data/06_models/embedded_base"
RECORD_FILE = "base_record.json"
MODEL_DIR = "model"

#: the base model's recipe (every key can be overridden by ``finetune.embedded_base``; docs/finetune.md)
BASE_DEFAULTS: dict[str, Any] = {
    "n_images": 2000,
    "resolution": 32,
    "n_captions": 5,
    "complexity_weights": [1.0, 1.0, 1.0, 1.0],
    "autoencoder": {"steps": 800},  # overrides of copying_study.diffusion.autoencoder.AUTOENCODER_DEFAULTS
    "tiny": {"unet_channels": [64, 128, 128], "unet_attention_levels": [False, True, True]},
    "steps": 1500,
    "batch_size": 32,
    "learning_rate": 1.0e-3,
    "lr_warmup_steps": 100,
    "uncond_prob": 0.1,
}


def base_spec(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`BASE_DEFAULTS` with ``overrides`` merged (``autoencoder`` and ``tiny`` key by key); ``ValueError``
    names an unknown key."""
    from copying_study.diffusion.autoencoder import autoencoder_settings

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(BASE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown finetune.embedded_base key(s) {unknown}: allowed {sorted(BASE_DEFAULTS)}")
    spec = copy.deepcopy(BASE_DEFAULTS)
    for key, value in overrides.items():
        if key in ("autoencoder", "tiny"):
            if not isinstance(value, Mapping):
                raise ValueError(f"finetune.embedded_base.{key} must be a mapping, got {value!r}")
            spec[key] = {**spec[key], **dict(value)}
        else:
            spec[key] = value
    spec["autoencoder"] = autoencoder_settings(spec["autoencoder"])
    for key in ("n_images", "steps", "batch_size", "resolution", "n_captions"):
        if isinstance(spec[key], bool) or not isinstance(spec[key], int) or spec[key] < 1:
            raise ValueError(f"finetune.embedded_base.{key} must be a positive integer, got {spec[key]!r}")
    return json.loads(json.dumps(spec))  # plain JSON types: the fingerprint hashes exactly this


def fingerprint(spec: Mapping[str, Any], device: torch.device) -> str:
    """sha256 of what decides the base model's bytes: spec, format, device type, torch and diffusers versions."""
    import diffusers

    key = {"spec": spec, "format": BASE_FORMAT, "seed": BASE_SEED, "device": torch.device(device).type,
           "torch": torch.__version__, "diffusers": diffusers.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def generic_set(spec: Mapping[str, Any]):
    """The generic pretraining set: embedded scenes from :data:`BASE_SEED` (no planted copies)."""
    from copying_study.data.embedded import generate_embedded

    return generate_embedded(n_images=int(spec["n_images"]), resolution=int(spec["resolution"]), n_clusters=0,
                             seed=BASE_SEED, n_captions=int(spec["n_captions"]),
                             complexity_weights=spec["complexity_weights"], shuffle=False)


def build_base(spec: Mapping[str, Any], folder: Path, device: torch.device | None = None) -> dict[str, Any]:
    """Pretrain the base model of ``spec`` into ``folder`` (``model/`` + ``base_record.json``); returns the record."""
    from copying_study.diffusion.autoencoder import train_autoencoder
    from copying_study.diffusion.models import build_tiny_pipeline, weights_checksum
    from copying_study.diffusion.train import train
    from copying_study.schemas import FinetuneParams

    device = torch.device(device or "cpu")
    spec = base_spec(spec)
    start = time.perf_counter()
    table = generic_set(spec)
    ae, ae_record = train_autoencoder(list(table["image"]), spec["autoencoder"], int(spec["resolution"]),
                                      BASE_SEED, device)
    captions = sorted({c for caps in table["captions"] for c in caps})
    initial = build_tiny_pipeline(captions, resolution=int(spec["resolution"]), seed=BASE_SEED, vae=ae,
                                  **spec["tiny"])
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "initial"
    initial.save_pretrained(staging)
    settings = FinetuneParams.from_params({
        "base_model": str(staging), "resolution": int(spec["resolution"]), "caption_type": "original",
        "duplication": "none", "ddf": 1, "steps": int(spec["steps"]), "batch_size": int(spec["batch_size"]),
        "learning_rate": float(spec["learning_rate"]), "lr_warmup_steps": int(spec["lr_warmup_steps"]),
        "uncond_prob": float(spec["uncond_prob"]), "train_text_encoder": True, "sample_every": 0,
        "sample_prompts": 0, "checkpoint_every": 0, "random_flip": True,
    })
    result = train(table, settings, BASE_SEED, device)
    result.pipe.to("cpu").save_pretrained(folder / MODEL_DIR)
    shutil.rmtree(staging)
    record = {
        "kind": EMBEDDED, "format": BASE_FORMAT, "spec": spec, "seed": BASE_SEED, "n_images": len(table),
        "autoencoder": ae_record, "loss_history": result.loss_history, "final_loss": result.loss_history[-1][1],
        "weights_checksum": weights_checksum(result.pipe.unet, result.pipe.text_encoder), "device": str(device),
        "seconds": round(time.perf_counter() - start, 1), "components": result.components,
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return record


def ensure_base(overrides: Mapping[str, Any] | None = None, cache: str | Path = DEFAULT_CACHE,
                device: torch.device | None = None) -> tuple[Path, dict[str, Any], bool]:
    """The cached base model of ``overrides`` (built now when missing): ``(model folder, record, built_now)``."""
    device = torch.device(device or "cpu")
    spec = base_spec(overrides)
    fp = fingerprint(spec, device)
    final = Path(cache) / fp[:16]
    if (final / RECORD_FILE).is_file() and (final / MODEL_DIR / "model_index.json").is_file():
        record = json.loads((final / RECORD_FILE).read_text())
        logger.debug("embedded base model: cached %s (built in %.0f s)", final, record.get("seconds", 0))
        return final / MODEL_DIR, {**record, "fingerprint": fp, "folder": str(final)}, False
    Path(cache).mkdir(parents=True, exist_ok=True)
    logger.warning("embedded base model %s is not built yet: pretraining it now, once (%d steps on %d generic "
                   "scenes; minutes on a CPU). `copying-study build-base` does this ahead of time.",
                   fp[:16], spec["steps"], spec["n_images"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{fp[:16]}.building-{os.getpid()}-", dir=cache))
    try:
        record = build_base(spec, tmp, device)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same build first: keep its copy (the same bytes)
            if not (final / RECORD_FILE).is_file():
                raise
            logger.info("embedded base model %s was built concurrently by another run; using that copy", fp[:16])
            shutil.rmtree(tmp, ignore_errors=True)
            record = json.loads((final / RECORD_FILE).read_text())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / MODEL_DIR, {**record, "fingerprint": fp, "folder": str(final)}, True
