"""The descriptor interface shared by every copy-detection descriptor.

A descriptor turns PIL images into L2-normalised float32 vectors whose inner product is the copy-similarity score.
Subclasses implement ``_prepare`` (one PIL image -> a float tensor) and ``_forward`` (a stacked batch -> raw
features); ``encode`` does batching, device placement, half precision on CUDA, NaN checks, the L2 norm and, when the
descriptor has a ``whitening`` spec, the centring + PCA whitening of :mod:`copying_study.descriptors.scale` (fitted
once per process on the generic reference set and recorded, with its sha256, in ``meta()``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.descriptors.preprocess import ImageTransform
from copying_study.descriptors.scale import Whitening, fit_whitening, whitening_spec
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.images import decode_image, to_rgb
from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

#: fitted whitenings, keyed by (descriptor identity, whitening spec): fitting encodes the reference set once per process
_WHITENINGS: dict[str, Whitening] = {}


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
    #: a published copy threshold on this descriptor's scale (SSCD: 0.5); ``None``: calibration derives one
    standard_copy_threshold: float | None = None
    #: True when ``_prepare(image)`` is exactly ``self.transform(image)`` (an :class:`ImageTransform`): images then
    #: travel to the device as uint8 and are normalised there, 4x less to copy, with bit-identical values
    prepares_with_transform: bool = False

    def __init__(self, batch_size: int = 64, device: str = "auto", half: bool | None = None,
                 whitening: Mapping[str, Any] | None = None, workers: int | str = "auto") -> None:
        if int(batch_size) < 1:
            raise ValueError(f"descriptor.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = pick_device(device)
        # half precision only where it is fast and safe: CUDA. ``half=None`` means "on CUDA".
        self.half = (self.device.type == "cuda") if half is None else bool(half) and self.device.type == "cuda"
        self.workers = resolve_workers(workers, self.device)
        self.channels_last = False  # set by subclasses whose convolutional model is faster in NHWC on CUDA
        self.transform: ImageTransform | None = None
        #: the model's own feature size (``output_dim`` is what ``encode`` returns: the whitening's dim if any)
        self.dim: int = 0
        self.whitening_spec = whitening_spec(whitening)

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
    @property
    def output_dim(self) -> int:
        """The size of the vectors ``encode`` returns."""
        return self.whitening().dim if self.whitening_spec else int(self.dim)

    def meta(self) -> dict[str, Any]:
        """What produced the vectors: name, dim, preprocessing, weights, config (with the whitening spec),
        the fitted whitening (sha256) and the device used."""
        meta = {
            "name": self.name,
            "dim": int(self.output_dim),
            "preprocessing": self.preprocessing(),
            "weights": self.weights(),
            "config": {**self.config(), "whitening": self.whitening_spec},
            "device": describe_device(self.device),
            "half_precision": self.half,
            "l2_normalised": True,
        }
        if self.whitening_spec:
            meta["model_dim"] = int(self.dim)
            meta["whitening"] = self.whitening().describe()
        return meta

    def whitening(self) -> Whitening:
        """The fitted whitening (fitted on first use from the generic reference set; cached per process and thread
        counts)."""
        if not self.whitening_spec:
            raise ValueError(f"descriptor '{self.name}' has no whitening")
        from copying_study.utils.threads import current_threads

        # the reference features come from the model at this process's thread counts: part of the identity
        identity = json.dumps({"name": self.name, "config": self.config(), "weights": (self.weights() or {}).get(
            "sha256"), "whitening": self.whitening_spec, "threads": current_threads()}, sort_keys=True, default=str)
        if identity not in _WHITENINGS:
            from copying_study.descriptors.reference import whitening_reference

            reference = whitening_reference(int(self.whitening_spec["n_reference"]))
            raw = self._encode_raw(reference, desc=f"{self.name} whitening reference")
            _WHITENINGS[identity] = fit_whitening(raw, self.whitening_spec)
        return _WHITENINGS[identity]

    def _host_form(self, image: Image.Image) -> torch.Tensor:
        """What travels to the device for one image: uint8 pixels when the preparation is an ``ImageTransform``
        (normalised on the device by :meth:`_device_form`), else ``_prepare``'s float tensor."""
        rgb = to_rgb(image) if image.mode != "RGB" else image
        if self.prepares_with_transform and self.transform is not None:
            return self.transform.to_uint8(rgb)
        return self._prepare(rgb)

    def _device_form(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked host batch -> the model's input on ``self.device`` (normalised, half, channels-last)."""
        batch = batch.to(self.device, non_blocking=batch.is_pinned())
        if batch.dtype == torch.uint8:
            batch = self.transform.normalise(batch)
        if self.half:
            batch = batch.half()
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _host_batches(self, images: Sequence[Image.Image]) -> Iterator[tuple[int, list[tuple[list[int], torch.Tensor]]]]:
        """``(start, groups)`` for each batch of ``batch_size`` images in order, where ``groups`` stacks the images
        of equal shape (aspect-preserving resizes differ) as ``(positions in the batch, tensor)``.

        With ``workers`` > 0 a thread pool prepares whole batches ahead of the model (decoding and resizing release
        the GIL), into pinned memory on CUDA so the copy to the device overlaps the previous batch's forward pass.
        """
        pin = self.device.type == "cuda"

        def batch_at(start: int) -> list[tuple[list[int], torch.Tensor]]:
            tensors = [self._host_form(images[i]) for i in range(start, min(start + self.batch_size, len(images)))]
            return stack_groups(tensors, pin)

        starts = range(0, len(images), self.batch_size)
        if self.workers == 0 or len(starts) == 1:
            for start in starts:
                yield start, batch_at(start)
            return
        ahead = self.workers + 2  # batches being prepared while the model runs
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-prepare") as pool:
            queue: deque = deque()
            todo = iter(starts)
            for start in todo:
                queue.append((start, pool.submit(batch_at, start)))
                if len(queue) >= ahead:
                    break
            while queue:
                start, future = queue.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(batch_at, nxt)))
                yield start, future.result()

    def encode(self, images: Sequence[Image.Image], desc: str | None = None) -> np.ndarray:
        """Descriptors of ``images`` as float32 [N, output_dim] with unit-norm rows, computed in batches (whitened
        when the descriptor has a whitening spec).

        ``images`` is any sequence supporting ``len`` and indexing (a list, or ``EncodedImages`` for lazy decoding,
        which then happens in the ``workers`` threads). The values do not depend on ``workers``: every batch holds
        the same images and goes through the same computation. On CUDA each batch's result is copied back
        asynchronously and read one batch later, so the GPU is never idle waiting for that copy.
        """
        raw = self._encode_raw(images, desc)
        return self.whitening().apply(raw) if self.whitening_spec else raw

    def _encode_raw(self, images: Sequence[Image.Image], desc: str | None = None) -> np.ndarray:
        """The model's L2-normalised features of ``images`` (float32 [N, dim]), before any whitening."""
        if len(images) == 0:
            raise ValueError(f"{self.name} descriptor: no images to encode (empty input)")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        in_flight: deque = deque()  # (rows, host tensor, CUDA event of its copy)
        batches = self._host_batches(images)
        total = math.ceil(len(images) / self.batch_size)
        try:
            for start, groups in progress(batches, desc=desc or f"{self.name} descriptors", total=total,
                                          unit="batch"):
                for positions, batch in groups:
                    with torch.inference_mode():
                        feats = self._forward(self._device_form(batch))
                    if feats.ndim != 2 or feats.shape[1] != self.dim:
                        raise ValueError(f"{self.name} model returned features of shape {tuple(feats.shape)}; "
                                         f"expected [B, {self.dim}]")
                    rows = start + np.asarray(positions)
                    if self.device.type != "cuda":
                        out[rows] = feats.float().cpu().numpy()
                        continue
                    copied = torch.cuda.Event()
                    in_flight.append((rows, feats.float().to("cpu", non_blocking=True), copied))
                    copied.record()
                    while len(in_flight) > 2:
                        _collect(out, *in_flight.popleft())
        finally:
            batches.close()  # an error also stops the preparing threads
        while in_flight:
            _collect(out, *in_flight.popleft())
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise ValueError(f"{self.name} descriptor produced NaN/inf for {bad} image(s)")
        return l2_normalize(out)

    def encode_rows(self, images: Sequence[Image.Image], desc: str | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``encode`` plus per-row side information (arrays of length N) that a descriptor reports about its own
        output, e.g. PDQ's hash quality; ``{}`` for descriptors that have none."""
        return self.encode(images, desc), {}

def _collect(out: np.ndarray, rows: np.ndarray, host: torch.Tensor, copied: Any) -> None:
    """Wait for an asynchronous device-to-host copy and write its rows."""
    copied.synchronize()
    out[rows] = host.numpy()


def resolve_workers(workers: int | str, device: torch.device) -> int:
    """Threads that decode and prepare images: ``auto`` = none on a CPU device (the model needs the cores), else one
    per core but one, at most 16; or a number >= 0."""
    if workers == "auto":
        if device.type == "cpu":
            return 0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(16, cores - 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"descriptor.workers must be 'auto' or an integer >= 0, got {workers!r}")
    return workers


def stack_groups(tensors: list[torch.Tensor], pin: bool = False) -> list[tuple[list[int], torch.Tensor]]:
    """Tensors of equal shape stacked together: ``[(positions, stacked), ...]`` in order of first appearance;
    ``pin`` stacks straight into page-locked memory (for asynchronous copies to a GPU)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for pos, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(pos)
    out = []
    for positions in groups.values():
        first = tensors[positions[0]]
        stacked = torch.empty((len(positions), *first.shape), dtype=first.dtype, pin_memory=pin)
        torch.stack([tensors[p] for p in positions], out=stacked)
        out.append((positions, stacked))
    return out
