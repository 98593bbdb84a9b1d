"""SSCD (Pizzi et al., CVPR 2022) from its TorchScript file, with SSCD's own recommended preprocessing.

SSCD's README: resize the short edge to 288 keeping the aspect ratio (``resize_mode: short_edge``, the evaluation
default) or resize to a 320×320 square (``resize_mode: square``); ToTensor; ImageNet mean/std. The TorchScript
models end in an L2 norm (512-d for ``sscd_disc_mixup``, 1024-d for ``sscd_disc_large``); ``encode`` re-normalises,
which is a no-op for them. Scores: cosine; 0.75 ≈ 90 % precision on DISC2021 for ``sscd_disc_mixup``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from copying_study.descriptors.base import Descriptor, sha256_file
from copying_study.descriptors.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

logger = logging.getLogger(__name__)

DEFAULT_SIZES = {"short_edge": 288, "square": 320}


def require_file(path: str | Path | None, what: str) -> Path:
    """``path`` as a ``Path`` if it is an existing file; else a ``FileNotFoundError`` naming ``what``."""
    if not path:
        raise FileNotFoundError(f"{what} is not set: give the path of the weights file")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: weights file '{p}' does not exist")
    return p


class SSCDDescriptor(Descriptor):
    """SSCD TorchScript model (``sscd_disc_mixup.torchscript.pt`` etc.)."""

    name = "sscd"
    prepares_with_transform = True
    #: the paper's copy threshold on SSCD's scale ("similarity > 0.5 ... likely to be copies", §3-4)
    standard_copy_threshold = 0.5

    def __init__(
        self,
        path: str | None = None,
        resize_mode: str = "short_edge",
        size: int | None = None,
        batch_size: int = 32,
        device: str = "auto",
        half: bool | None = None,
        whitening: Mapping[str, Any] | None = None,
        workers: int | str = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, device=device, half=half, whitening=whitening, workers=workers)
        if resize_mode not in DEFAULT_SIZES:
            raise ValueError(f"descriptor.resize_mode '{resize_mode}' is not one of {', '.join(DEFAULT_SIZES)}")
        self.path = require_file(path, "descriptor.path (SSCD TorchScript file)")
        self.sha256 = sha256_file(self.path)
        self.transform = ImageTransform(
            resize=int(size or DEFAULT_SIZES[resize_mode]), mode=resize_mode, crop=None,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, resample="bilinear",
        )
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
            raise ValueError(f"descriptor.path '{self.path}' is not a TorchScript model: {exc}") from exc
        if self.half:
            self.model = self.model.half()
        if self.device.type == "cuda":  # cuDNN's NHWC convolutions are the fast ones for a ResNet in half precision
            self.model = self.model.to(memory_format=torch.channels_last)
            self.channels_last = True
        probe = torch.zeros(1, 3, self.transform.resize, self.transform.resize, device=self.device)
        with torch.inference_mode():
            out = self.model(probe.half() if self.half else probe)
        if out.ndim != 2:
            raise ValueError(f"SSCD model '{self.path}' returned shape {tuple(out.shape)}; expected [B, dim]")
        self.dim = int(out.shape[1])
        logger.info("SSCD descriptor: %s (%d-d, sha256 %s...) on %s", self.path.name, self.dim,
                    self.sha256[:12], self.device)

    def _prepare(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def preprocessing(self) -> dict[str, Any]:
        return self.transform.describe()

    def config(self) -> dict[str, Any]:
        return {"resize_mode": self.transform.mode, "size": self.transform.resize}

    def weights(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256}
