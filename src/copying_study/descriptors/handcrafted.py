"""The training-free ``default`` descriptor: layout thumbnails + signed gradient histograms + hue histograms.

It needs no weights, so the embedded study and CI run offline. It is *not* SSCD: it is a hand-made detector for
near-exact copies (resize, JPEG, crops of up to 10 %, brightness/contrast changes, small overlaid text), not for
heavy edits, and its scores live on their own scale (see docs/dedup.md for the measured distributions).

How an image becomes a vector (deterministic, batched in torch, CPU or CUDA):

1. resize to ``work_size``² RGB in [0, 1] (bilinear, antialiased, aspect ignored), Gaussian blur of ``blur`` px
   (removes JPEG blocking and ringing);
2. luminance ``Y = (R+G+B)/3`` and opponent colours ``O1 = (R-G)/√2``, ``O2 = (R+G-2B)/√6``;
3. **layout** (coarse arrangement): for each scale s in ``layout_scales``, Y area-averaged to s×s and centred
   (brightness-invariant) with ``chroma_weight``·(O1, O2); each scale's block unit-normalised (contrast-invariant);
4. **gradients** (shapes and edges, tolerant to small shifts): signed gradient orientation of Y in ``orientations``
   bins, magnitude-weighted, soft-binned, pooled over a ``hog_cells``² grid of half-overlapping windows, divided by
   the total, square-rooted (Hellinger), centred over the bins of each cell and unit-normalised;
5. **colour** (shift-invariant): hue angle of (O1, O2) in ``hue_bins`` bins weighted by saturation — invariant to
   brightness, contrast and saturation changes — pooled over a ``hue_cells``² grid, normalised, square-rooted;
6. concatenate ``weights``·(layout, gradients, colour) and a tiny constant component (so an image with no
   variation at all still has a direction: two flat images score 1), then L2-normalise.

The defaults were chosen by measurement (``python -m copying_study.descriptors.calibration``; docs/dedup.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from copying_study.descriptors.base import Descriptor

ALGORITHM = "layout-hog-hue"
VERSION = 1
FLOOR = 1e-3  # below this norm a block counts as "no variation"
FLAT_COMPONENT = 1e-4


def _unit(v: torch.Tensor) -> torch.Tensor:
    """Rows divided by their norm; rows with norm below ``FLOOR`` (no variation) become zero."""
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > FLOOR, v / norm.clamp_min(FLOOR), torch.zeros_like(v))


def _soft_bins(angle: torch.Tensor, weight: torch.Tensor, nbins: int, period: float) -> torch.Tensor:
    """[B, H, W] angles in [0, period) -> [B, nbins, H, W] maps, each vote split linearly between two bins."""
    pos = angle / period * nbins - 0.5
    lo = torch.floor(pos)
    frac = pos - lo
    lo_bin = lo.long() % nbins
    hi_bin = (lo_bin + 1) % nbins
    out = torch.zeros(angle.shape[0], nbins, *angle.shape[1:], dtype=angle.dtype, device=angle.device)
    out.scatter_add_(1, lo_bin.unsqueeze(1), (weight * (1 - frac)).unsqueeze(1))
    out.scatter_add_(1, hi_bin.unsqueeze(1), (weight * frac).unsqueeze(1))
    return out


def _pool_cells(maps: torch.Tensor, cells: int) -> torch.Tensor:
    """Average over a cells×cells grid of windows twice the cell size (half-overlapping), flattened."""
    c = maps.shape[-1] // cells
    pooled = F.avg_pool2d(maps, kernel_size=2 * c, stride=c, padding=c // 2, count_include_pad=False)
    return pooled[..., :cells, :cells].flatten(1)


def _histogram_block(hist: torch.Tensor) -> torch.Tensor:
    """Mass-normalise a non-negative histogram vector, then square-root it (Hellinger)."""
    return torch.sqrt(hist / hist.sum(dim=1, keepdim=True).clamp_min(FLOOR * hist.shape[1]))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class HandcraftedDescriptor(Descriptor):
    """The training-free ``default`` descriptor (layout + signed-gradient + hue histograms)."""

    name = "default"

    def __init__(
        self,
        work_size: int = 64,
        blur: float = 2.0,
        layout_scales: Sequence[int] = (4, 8),
        chroma_weight: float = 0.5,
        hog_cells: int = 8,
        orientations: int = 8,
        hue_cells: int = 4,
        hue_bins: int = 12,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        batch_size: int = 256,
        device: str = "auto",
        half: bool | None = None,
        whitening: Mapping[str, Any] | None = None,
        workers: int | str = "auto",
    ) -> None:
        # float32: cheap, and exact across devices
        super().__init__(batch_size=batch_size, device=device, half=False, whitening=whitening, workers=workers)
        scales = [int(s) for s in layout_scales]
        for key, cells in [("layout_scales", s) for s in scales] + [("hog_cells", hog_cells), ("hue_cells", hue_cells)]:
            if int(cells) < 1 or int(work_size) % int(cells):
                raise ValueError(f"default descriptor: {key} value {cells} must be >= 1 and divide work_size "
                                 f"{work_size}")
        w = [float(v) for v in weights]
        if len(w) != 3 or any(v < 0 for v in w) or not any(w):
            raise ValueError(f"default descriptor: weights must be 3 non-negative numbers (layout, gradients, "
                             f"colour), not all 0; got {list(weights)}")
        if blur < 0 or chroma_weight < 0 or int(orientations) < 2 or int(hue_bins) < 2:
            raise ValueError("default descriptor: blur and chroma_weight must be >= 0, orientations and hue_bins >= 2")
        self.work_size, self.blur, self.layout_scales = int(work_size), float(blur), scales
        self.chroma_weight, self.hog_cells, self.orientations = float(chroma_weight), int(hog_cells), int(orientations)
        self.hue_cells, self.hue_bins, self.weights_ = int(hue_cells), int(hue_bins), w
        self.dim = (sum(3 * s * s for s in scales) + self.orientations * self.hog_cells**2
                    + self.hue_bins * self.hue_cells**2 + 1)

    def _prepare(self, image: Image.Image) -> torch.Tensor:
        img = image.resize((self.work_size, self.work_size), resample=Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = _gaussian_blur(batch, self.blur) if self.blur > 0 else batch
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        y = (r + g + b) / 3.0
        opp = torch.stack([(r - g) / math.sqrt(2.0), (r + g - 2 * b) / math.sqrt(6.0)], dim=1)
        w_layout, w_grad, w_colour = self.weights_
        blocks = [w_layout * _unit(torch.cat([self._layout(y, opp, s) for s in self.layout_scales], dim=1)),
                  w_grad * self._gradients(y), w_colour * self._colour(opp)]
        flat = torch.full((x.shape[0], 1), FLAT_COMPONENT, dtype=x.dtype, device=x.device)
        return torch.cat(blocks + [flat], dim=1)

    def _layout(self, y: torch.Tensor, opp: torch.Tensor, s: int) -> torch.Tensor:
        ys = F.adaptive_avg_pool2d(y.unsqueeze(1), s).flatten(1)
        ys = ys - ys.mean(dim=1, keepdim=True)
        cs = self.chroma_weight * F.adaptive_avg_pool2d(opp, s).flatten(1)
        return _unit(torch.cat([ys, cs], dim=1))

    def _gradients(self, y: torch.Tensor) -> torch.Tensor:
        yp = F.pad(y.unsqueeze(1), (1, 1, 1, 1), mode="replicate")[:, 0]
        gx = yp[:, 1:-1, 2:] - yp[:, 1:-1, :-2]
        gy = yp[:, 2:, 1:-1] - yp[:, :-2, 1:-1]
        angle = torch.remainder(torch.atan2(gy, gx), 2 * math.pi)
        maps = _soft_bins(angle, torch.sqrt(gx**2 + gy**2), self.orientations, 2 * math.pi)
        h = _histogram_block(_pool_cells(maps, self.hog_cells))
        h = h.view(h.shape[0], self.orientations, -1)
        return _unit((h - h.mean(dim=1, keepdim=True)).flatten(1))

    def _colour(self, opp: torch.Tensor) -> torch.Tensor:
        sat = opp.norm(dim=1)
        hue = torch.remainder(torch.atan2(opp[:, 1], opp[:, 0]), 2 * math.pi)
        hist = _histogram_block(_pool_cells(_soft_bins(hue, sat, self.hue_bins, 2 * math.pi), self.hue_cells))
        return _unit(hist)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "version": VERSION,
            "resize": f"{self.work_size}x{self.work_size} square (aspect ignored), bilinear antialiased",
            "blur_sigma_px": self.blur,
            "colour": "Y=(R+G+B)/3, O1=(R-G)/sqrt2, O2=(R+G-2B)/sqrt6",
            "blocks": "layout thumbnails + signed gradient histograms + saturation-weighted hue histograms",
        }

    def config(self) -> dict[str, Any]:
        return {
            "work_size": self.work_size,
            "blur": self.blur,
            "layout_scales": list(self.layout_scales),
            "chroma_weight": self.chroma_weight,
            "hog_cells": self.hog_cells,
            "orientations": self.orientations,
            "hue_cells": self.hue_cells,
            "hue_bins": self.hue_bins,
            "weights": list(self.weights_),
        }
