"""FID with torchmetrics' maintained implementation and the standard Inception weights from a local TorchScript file.

The Fréchet distance itself is ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 feature sums, the
standard ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``). torch-fidelity, which torchmetrics would use for its
built-in Inception, cannot be installed beside this project's torch, so the features come from a ``feature=``
module: :class:`InceptionFeatures`, a thin wrapper around the TorchScript file ``inception-2015-12-05.pt`` used by
StyleGAN2-ADA and clean-fid (the TF FID Inception graph, pool3, 2048-d).

Input range (checked in tests): that TorchScript module's ``forward(x, return_features=True)`` takes float images
of shape [N, 3, H, W] with values in **[0, 255]**; it resizes to 299×299 (bilinear) when needed and maps the values to
[-1, 1] with ``(x - 128) / 128`` itself. So we feed [0, 255] and never normalise ourselves — the paper's code
normalised twice and fed [-3, 1] (dcr-notes §2.7). Images are first resized to 299×299 with clean-fid's "clean"
resize (PIL bicubic on each channel in float32, no rounding to uint8; non-square images are stretched like
clean-fid does), so the module's own bilinear resize is a no-op.

Without that file a Fréchet distance is still reported, in another feature space (e.g. the copy descriptor's), and
named as such — it is never called FID (:func:`frechet_distance_from_features`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from copying_study.utils.images import to_rgb
from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299
INCEPTION_FILE = "inception-2015-12-05.pt"
INPUT_RANGE = (0.0, 255.0)


def clean_resize(img: Image.Image, size: int = INCEPTION_SIZE) -> np.ndarray:
    """``img`` as float32 [size, size, 3] in [0, 255]: bicubic resize of each channel in float (clean-fid "clean")."""
    rgb = np.asarray(to_rgb(img), dtype=np.float32)
    if rgb.shape[:2] == (size, size):
        return rgb.copy()
    channels = [
        np.asarray(Image.fromarray(rgb[:, :, c], mode="F").resize((size, size), resample=Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), *INPUT_RANGE).astype(np.float32)


def fid_batch(images: Sequence[Image.Image], size: int = INCEPTION_SIZE) -> torch.Tensor:
    """A float32 [N, 3, size, size] tensor in [0, 255] — the input :class:`InceptionFeatures` expects."""
    arr = np.stack([clean_resize(img, size) for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class InceptionFeatures(nn.Module):
    """``feature=`` module for torchmetrics' FID: the FID Inception TorchScript, fed [0, 255] floats.

    ``forward(x)`` takes float [N, 3, 299, 299] in [0, 255] (see :func:`fid_batch`) and returns [N, num_features]
    pool3 features. Values outside [0, 255] or a wrong shape raise ``ValueError`` (a [-1, 1] or [-3, 1] input — the
    paper code's mistake — is refused).
    """

    def __init__(self, net: torch.jit.ScriptModule | nn.Module, size: int = INCEPTION_SIZE) -> None:
        super().__init__()
        self.net = net.eval()
        self.size = int(size)
        with torch.no_grad():
            probe = torch.full((1, 3, self.size, self.size), 128.0, device=self._device())
            self.num_features = int(self._features(probe).shape[-1])

    def _device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, return_features=True)
        return out.reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (self.size, self.size):
            raise ValueError(f"Inception input must be [N, 3, {self.size}, {self.size}], got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"Inception input must be float in [0, 255], got dtype {x.dtype}")
        lo, hi = float(x.min()), float(x.max())
        if lo < INPUT_RANGE[0] or hi > INPUT_RANGE[1]:
            raise ValueError(f"Inception input must lie in [0, 255]; got values in [{lo:.3g}, {hi:.3g}]")
        with torch.no_grad():
            return self._features(x.to(self._device(), torch.float32)).float()


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The FID Inception network from a local TorchScript file (``inception-2015-12-05.pt``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"evaluate.fid.inception_path: no file at {p} (expected the TorchScript '{INCEPTION_FILE}' used by "
            "StyleGAN2-ADA / clean-fid; set the path to null to report a Fréchet distance in descriptor space instead)"
        )
    try:
        net = torch.jit.load(str(p), map_location=torch.device(device))
    except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ValueError(f"evaluate.fid.inception_path: {p} is not a TorchScript file ({exc})") from exc
    try:
        return InceptionFeatures(net)
    except Exception as exc:
        raise ValueError(
            f"evaluate.fid.inception_path: {p} does not behave like the FID Inception TorchScript "
            f"(forward(x, return_features=True) on a [1, 3, 299, 299] input failed: {exc})"
        ) from exc


def _metric(feature: nn.Module):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # normalize=True: with a custom feature module torchmetrics passes float inputs through unchanged
    return FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=True)


def frechet_inception_distance(
    real: Iterable[Image.Image],
    fake: Iterable[Image.Image],
    inception: InceptionFeatures,
    batch_size: int = 32,
    n_real: int | None = None,
    n_fake: int | None = None,
) -> float:
    """FID between two image sets (iterables of PIL images, consumed in batches) with torchmetrics' FID."""
    if int(batch_size) < 1:
        raise ValueError(f"evaluate.fid.batch_size must be >= 1, got {batch_size}")
    metric = _metric(inception).to(inception._device())
    counts = {}
    for name, images, is_real, total in (("real", real, True, n_real), ("fake", fake, False, n_fake)):
        counts[name] = 0
        for batch in progress(_batches(images, int(batch_size)), desc=f"FID {name} images",
                              total=None if total is None else -(-total // int(batch_size)), unit="batch"):
            metric.update(fid_batch(batch, inception.size), real=is_real)
            counts[name] += len(batch)
    _check_counts(counts["real"], counts["fake"])
    return float(metric.compute())


def frechet_distance_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """The Fréchet distance between two feature sets [N, d] (torchmetrics' computation, features given as is)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be [N, d] with the same d; got {real.shape} and {fake.shape}")
    _check_counts(real.shape[0], fake.shape[0])
    metric = _metric(_GivenFeatures(real.shape[1]))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    return float(metric.compute())


class _GivenFeatures(nn.Module):
    """Identity ``feature=`` module: the inputs already are the features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check_counts(n_real: int, n_fake: int) -> None:
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"a Fréchet distance needs >= 2 images on each side; got {n_real} real and {n_fake} fake")


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

