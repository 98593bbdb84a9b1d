"""The descriptor interface shared by every copy-detection descriptor.

A descriptor turns PIL images into L2-normalised float32 vectors whose inner product is the copy-similarity score.
Subclasses implement ``_prepare`` (one PIL image -> a float tensor) and ``_forward`` (a stacked batch -> raw
features); ``encode`` does batching, device placement, half precision on CUDA, NaN checks and the final L2 norm.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.images import decode_image, to_rgb
from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm (float32). Raises ``ValueError`` on NaN/inf or an all-zero row."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("descriptors contain NaN or inf values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms <= eps).any():
        raise ValueError(f"{int((norms <= eps).sum())} descriptor row(s) have zero norm and cannot be normalised")
    return (x / norms).astype(np.float32, copy=False)


class EncodedImages(Sequence):
    """A lazy sequence over encoded images (e.g. ``training_set["image"]``): slicing decodes only that slice, so
    ``Descriptor.encode`` holds one batch of decoded images at a time."""

    def __init__(self, column: Sequence[bytes]) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, item: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(item, slice):
            return [decode_image(b) for b in list(self._column[item])]
        return decode_image(self._column[item])


class Descriptor(ABC):
    """A copy-detection descriptor: ``encode(images) -> float32 [N, dim]`` with L2-normalised rows."""

    #: registry name (``default``, ``sscd``, ``clip``, ``dino``)
    name: str = ""

    def __init__(self, batch_size: int = 64, device: str = "auto", half: bool | None = None) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"descriptor.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = pick_device(device)
        # half precision only where it is fast and safe: CUDA. ``half=None`` means "on CUDA".
        self.half = (self.device.type == "cuda") if half is None else bool(half) and self.device.type == "cuda"
        self.dim: int = 0

    # -- to implement ---------------------------------------------------------------------------------
    @abstractmethod
    def _prepare(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> a float32 tensor (model input, CHW or any fixed-rank layout)."""

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch on ``self.device`` -> raw features [B, dim]."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """A JSON-able description of the preprocessing (sizes, resampling, normalisation)."""

    def config(self) -> dict[str, Any]:
        """The constructor options needed to rebuild this descriptor (JSON-able)."""
        return {}

    def weights(self) -> dict[str, Any] | None:
        """``{"path", "sha256"}`` of the weights used, or ``None`` for a training-free descriptor."""
        return None

    # -- shared ---------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """What produced the vectors: name, dim, preprocessing, weights, config and the device used."""
        return {
            "name": self.name,
            "dim": int(self.dim),
            "preprocessing": self.preprocessing(),
            "weights": self.weights(),
            "config": self.config(),
            "device": describe_device(self.device),
            "half_precision": self.half,
            "l2_normalised": True,
        }

    def encode(self, images: Sequence[Image.Image], desc: str | None = None) -> np.ndarray:
        """Descriptors of ``images`` as float32 [N, dim] with unit-norm rows, computed in batches.

        ``images`` is any sequence supporting ``len`` and slicing (a list, or ``EncodedImages`` for lazy decoding).
        """
        if len(images) == 0:
            raise ValueError(f"{self.name} descriptor: no images to encode (empty input)")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        starts = range(0, len(images), self.batch_size)
        for start in progress(starts, desc=desc or f"{self.name} descriptors", total=len(starts), unit="batch"):
            chunk = list(images[start : start + self.batch_size])
            tensors = [self._prepare(to_rgb(img) if img.mode != "RGB" else img) for img in chunk]
            # images of different shapes (aspect-preserving resizes) are run in groups of equal shape
            groups: dict[tuple[int, ...], list[int]] = {}
            for pos, t in enumerate(tensors):
                groups.setdefault(tuple(t.shape), []).append(pos)
            for positions in groups.values():
                batch = torch.stack([tensors[p] for p in positions]).to(self.device)
                if self.half:
                    batch = batch.half()
                with torch.inference_mode():
                    feats = self._forward(batch).float().cpu().numpy()
                if feats.ndim != 2 or feats.shape[1] != self.dim:
                    raise ValueError(
                        f"{self.name} model returned features of shape {feats.shape}; expected [B, {self.dim}]"
                    )
                out[[start + p for p in positions]] = feats
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise ValueError(f"{self.name} descriptor produced NaN/inf for {bad} image(s)")
        return l2_normalize(out)

    def encode_rows(self, images: Sequence[Image.Image], desc: str | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``encode`` plus per-row side information (arrays of length N) that a descriptor reports about its own
        output, e.g. PDQ's hash quality; ``{}`` for descriptors that have none."""
        return self.encode(images, desc), {}
