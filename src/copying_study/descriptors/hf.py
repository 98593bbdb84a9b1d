"""Image encoders from a local Hugging Face folder (or the local HF cache): ``clip`` and ``dino``.

* ``clip``: ``CLIPVisionModelWithProjection``; the descriptor is ``image_embeds`` (the projected CLS token).
* ``dino``: ``AutoModel`` (DINO ViT, DINOv2, ...); the descriptor is the CLS token of ``last_hidden_state`` (never the
  ``pooler_output`` of ``ViTModel``, whose pooler is not part of DINO checkpoints).

Preprocessing is done with PIL/numpy (no torchvision) from the folder's ``preprocessor_config.json`` when it has one
(``size``/``shortest_edge``, ``crop_size``, ``image_mean``, ``image_std``, ``resample``), else from each model family's
standard values (CLIP: 224 short edge, 224 crop, CLIP mean/std, bicubic; DINO: 256 short edge, 224 crop, ImageNet
mean/std, bicubic).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from copying_study.descriptors.base import Descriptor, sha256_file
from copying_study.descriptors.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
)

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PIL_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box"}
FAMILY_DEFAULTS = {
    "clip": {"resize": 224, "crop": 224, "mean": CLIP_MEAN, "std": CLIP_STD, "resample": "bicubic"},
    "dino": {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resample": "bicubic"},
}


def resolve_model_dir(path: str | None, what: str) -> Path:
    """A local model folder: ``path`` itself, or a Hugging Face id already in the local HF cache."""
    if not path:
        raise FileNotFoundError(f"{what} is not set: give a local Hugging Face model folder")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{what}: '{p}' has no config.json (not a Hugging Face model folder)")
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - not a folder and not in the cache
        raise FileNotFoundError(
            f"{what}: '{path}' is neither a local model folder nor a model in the local Hugging Face cache "
            f"({type(exc).__name__})"
        ) from exc


def weights_record(folder: Path) -> dict[str, Any]:
    """Path and sha256 of the folder's weights file (the first of ``WEIGHT_FILES`` present)."""
    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            return {"path": str(f), "sha256": sha256_file(f)}
    raise FileNotFoundError(f"no weights file ({' or '.join(WEIGHT_FILES)}) in model folder '{folder}'")


def transform_from_folder(folder: Path, family: str) -> ImageTransform:
    """The preprocessing in ``preprocessor_config.json`` (if present) over the family's standard values."""
    spec = dict(FAMILY_DEFAULTS[family])
    cfg_path = folder / "preprocessor_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        size = cfg.get("size")
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height")
        crop = cfg.get("crop_size")
        if isinstance(crop, dict):
            crop = crop.get("height")
        if size:
            spec["resize"] = int(size)
        if cfg.get("do_center_crop", True) is False:
            spec["crop"] = None
        elif crop:
            spec["crop"] = int(crop)
        spec["mean"] = cfg.get("image_mean", spec["mean"])
        spec["std"] = cfg.get("image_std", spec["std"])
        if cfg.get("resample") in PIL_RESAMPLE_CODES:
            spec["resample"] = PIL_RESAMPLE_CODES[cfg["resample"]]
    return ImageTransform(resize=spec["resize"], mode="short_edge", crop=spec["crop"], mean=spec["mean"],
                          std=spec["std"], resample=spec["resample"])


def clip_sub_config(folder: str | Path, part: str) -> Any:
    """The ``vision`` or ``text`` config of a CLIP folder, with the projection size of the whole model.

    A full ``CLIPModel`` checkpoint (e.g. ``openai/clip-vit-large-patch14``) keeps ``projection_dim`` at the top
    level; loading ``CLIP{Vision,Text}ModelWithProjection`` from it without this would re-initialise the projection.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type == "clip":
        sub = getattr(config, f"{part}_config")
        sub.projection_dim = config.projection_dim
        return sub
    return config


def load_pretrained(cls: Any, folder: str | Path, config: Any = None, dtype: torch.dtype = torch.float32,
                    unused_prefixes: tuple[str, ...] = ()) -> Any:
    """``cls.from_pretrained`` (local files only) that refuses weights missing from, or mismatched with, the
    checkpoint: a silently re-initialised layer would make every score meaningless. Missing weights under
    ``unused_prefixes`` (layers the descriptor never uses, e.g. ViT's ``pooler.``) are allowed."""
    kwargs = {"config": config} if config is not None else {}
    model, info = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True, output_loading_info=True,
                                      **kwargs)
    missing = [k for k in info.get("missing_keys") or [] if not k.startswith(unused_prefixes)]
    bad = missing + [str(m) for m in info.get("mismatched_keys") or []]
    if bad:
        raise ValueError(f"model in '{folder}' does not fit {cls.__name__}: {len(bad)} weight(s) missing or of "
                         f"another shape (e.g. {bad[:3]})")
    return model


class HFImageDescriptor(Descriptor):
    """A Hugging Face image encoder (``family`` = ``clip`` or ``dino``)."""

    prepares_with_transform = True

    def __init__(
        self,
        family: str,
        path: str | None = None,
        batch_size: int = 32,
        device: str = "auto",
        half: bool | None = None,
        whitening: Mapping[str, Any] | None = None,
        workers: int | str = "auto",
    ) -> None:
        if family not in FAMILY_DEFAULTS:
            raise ValueError(f"unknown image-encoder family '{family}': use {', '.join(FAMILY_DEFAULTS)}")
        super().__init__(batch_size=batch_size, device=device, half=half, whitening=whitening, workers=workers)
        self.name = family
        self.folder = resolve_model_dir(path, f"descriptor.path ({family} model)")
        self._weights = weights_record(self.folder)
        self.transform = transform_from_folder(self.folder, family)
        dtype = torch.float16 if self.half else torch.float32
        if family == "clip":
            from transformers import CLIPVisionModelWithProjection

            self.model = load_pretrained(CLIPVisionModelWithProjection, self.folder,
                                         clip_sub_config(self.folder, "vision"), dtype)
            self.dim = int(self.model.config.projection_dim)
        else:
            from transformers import AutoModel

            self.model = load_pretrained(AutoModel, self.folder, None, dtype, unused_prefixes=("pooler.",))
            self.dim = int(self.model.config.hidden_size)
        self.model = self.model.to(self.device).eval()
        logger.info("%s descriptor: %s (%d-d) on %s", family, self.folder, self.dim, self.device)

    def _prepare(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.name == "clip":
            return self.model(pixel_values=batch).image_embeds
        return self.model(pixel_values=batch).last_hidden_state[:, 0]

    def preprocessing(self) -> dict[str, Any]:
        return self.transform.describe()

    def config(self) -> dict[str, Any]:
        return {"model_class": type(self.model).__name__}

    def weights(self) -> dict[str, Any]:
        return dict(self._weights, folder=str(self.folder))
