"""Image preprocessing for neural descriptors with PIL + numpy + torch only (no torchvision).

The steps mirror torchvision's ``Resize`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize`` so that models trained with
those transforms (SSCD, CLIP, DINO) see the inputs they expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def resample_filter(name: str) -> Image.Resampling:
    """The PIL filter called ``name`` (bilinear, bicubic, ...)."""
    try:
        return RESAMPLING[name]
    except KeyError:
        raise ValueError(f"unknown resampling '{name}': use one of {', '.join(RESAMPLING)}") from None


def resize_short_edge(img: Image.Image, size: int, resample: str = "bilinear") -> Image.Image:
    """Scale so the short edge is ``size`` keeping the aspect ratio (torchvision ``Resize(int)``)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        nw, nh = size, max(1, int(size * h / w))
    else:
        nw, nh = max(1, int(size * w / h)), size
    return img.resize((nw, nh), resample=resample_filter(resample))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size``×``size`` square (torchvision ``CenterCrop`` rounding)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop size {size}")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image -> float32 CHW tensor in [0, 1], then ``(x - mean) / std`` per channel."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class ImageTransform:
    """Resize (short edge, or a square that skews) -> optional centre crop -> ToTensor -> Normalize."""

    def __init__(
        self,
        resize: int,
        mode: str = "short_edge",
        crop: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resample: str = "bilinear",
    ) -> None:
        if mode not in ("short_edge", "square"):
            raise ValueError(f"unknown resize mode '{mode}': use short_edge or square")
        if int(resize) < 1 or (crop is not None and int(crop) < 1):
            raise ValueError(f"resize/crop sizes must be positive, got resize={resize} crop={crop}")
        resample_filter(resample)
        self.resize, self.mode, self.crop = int(resize), mode, (int(crop) if crop else None)
        self.mean, self.std, self.resample = tuple(map(float, mean)), tuple(map(float, std)), resample
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(self.geometry(img), self.mean, self.std)

    def geometry(self, img: Image.Image) -> Image.Image:
        """The resize (and crop) alone."""
        if self.mode == "square":
            img = img.resize((self.resize, self.resize), resample=resample_filter(self.resample))
        else:
            img = resize_short_edge(img, self.resize, self.resample)
        if self.crop:
            img = center_crop(img, self.crop)
        return img

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """The resized (and cropped) image as a uint8 CHW tensor: :meth:`normalise` of it (on any device) equals
        ``self(img)`` bit for bit, with a quarter of the bytes to move."""
        arr = np.asarray(self.geometry(img).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` -> float32 ``(x / 255 - mean) / std``, the same float32 operations in the same
        order as :func:`to_normalized_tensor` (so the same values), on ``batch``'s device."""
        if batch.device not in self._stats:  # made once per device: a copy to a GPU would wait for its queue
            self._stats[batch.device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=batch.device)[:, None, None] for v in (self.mean, self.std)
            )
        mean, std = self._stats[batch.device]
        return (batch.to(torch.float32) / 255.0 - mean) / std

    def describe(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "resize_mode": self.mode,
            "center_crop": self.crop,
            "resample": self.resample,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_range": "[0, 1] before normalisation",
        }
