"""The exact threshold self-join on a GPU with torch alone, for machines whose faiss has no GPU support.

faiss-gpu is not installable everywhere (its wheels need CUDA 12 libraries of several hundred MB), while torch with
CUDA usually is. This backend finds every pair ``i < j`` with ``x[i]·x[j] >= t`` in two passes:

1. **candidates**, on tiles of the upper triangle of ``X Xᵀ`` computed in float16 on the tensor cores (float32
   accumulation): every pair whose half-precision score is at least ``t - margin``. For unit vectors the
   half-precision score is within about 1.6e-3 of the exact one (input rounding 2·2⁻¹¹, output and threshold
   rounding 2⁻¹² each, accumulation and subnormals below 1e-4), so a margin of 4e-3 loses no pair; the margin
   scales with the largest squared norm for other vectors;
2. **exact scores**: each candidate's inner product again in float32, and the threshold applied to that.

So the pairs and scores are those of an exact float32 search (up to float32 summation order), at half-precision
matrix speed. Memory is one tile of ``row_block × col_block`` scores plus the pairs found. Like the faiss path, a
row with more than ``max_neighbors`` matches keeps only its top ones: a pair is kept when it is among the top
``max_neighbors`` of either of its rows. On a CPU device the tiles are float32 (for tests; faiss is faster there).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import torch

from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

MARGIN = 4e-3  # for unit vectors; see the module docstring for the bound it covers
FP16_MAX = 65504.0
PRUNE_AT = 1 << 27  # pairs held before the max_neighbors cap is applied on the way (20 bytes each)
CPU_COL_BLOCK = 1 << 16


def torch_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``auto``: CUDA when torch sees it, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _full_precision_accumulation():
    """float16 GEMMs accumulate in float32 (PyTorch otherwise lets cuBLAS reduce in float16)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_fp16_reduced_precision_reduction
    matmul.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_fp16_reduced_precision_reduction = before


def cap_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray, n: int, cap: int) -> tuple[np.ndarray, ...]:
    """Keep a pair when it is among the top ``cap`` (by score, ties by the other row's index) of ``i``'s pairs or of
    ``j``'s, which is what a top-``cap`` neighbour search from every row finds. Returns ``i, j, s`` and the number
    of rows that had more than ``cap`` pairs. Applying it to any subset of the pairs never drops a pair that the full
    set keeps, so it may also be used to bound memory while pairs are collected."""
    degree = np.bincount(np.concatenate([i, j]), minlength=n)
    over = int((degree > cap).sum())
    if not over:
        return i, j, s, 0
    m = i.size
    src, dst = np.concatenate([i, j]), np.concatenate([j, i])
    score, edge = np.concatenate([s, s]), np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((dst, -score, src))  # by row, then best score first, then the other row's index
    src_sorted = src[order]
    first = np.searchsorted(src_sorted, src_sorted, side="left")
    rank = np.arange(2 * m) - first
    keep = np.zeros(m, dtype=bool)
    keep[edge[order][rank < cap]] = True
    return i[keep], j[keep], s[keep], over


def torch_threshold_pairs(
    x: np.ndarray,
    threshold: float,
    max_neighbors: int = 2048,
    device: str | torch.device | None = None,
    row_block: int = 8192,
    col_block: int | None = None,
    margin: float = MARGIN,
    half: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All pairs ``i < j`` with ``x[i]·x[j] >= threshold`` (``x``: validated float32 [N, d]) on ``device``:
    ``i, j`` (int64), ``s`` (float32, exact float32 scores), unsorted, and the number of rows that had more than
    ``max_neighbors`` pairs (those keep their top ones). ``half`` (default: on CUDA) computes the candidate tiles
    in float16; ``col_block`` defaults to what a quarter of the free GPU memory holds."""
    dev = torch_device(device)
    n = x.shape[0]
    half = dev.type == "cuda" if half is None else bool(half)
    xs = torch.from_numpy(x).to(dev)
    top = float(torch.linalg.vector_norm(xs, dim=1).max())  # on the device: no N x d temporaries on the host
    if half and max(float(xs.amax()), -float(xs.amin())) > FP16_MAX / 2:
        raise ValueError("descriptors too large for the float16 candidate pass (|x| > 32752): normalise them or use "
                         "the faiss backend")
    slack = margin * max(1.0, top * top) if half else 1e-5 * max(1.0, top * top)
    low = threshold - slack
    tiles = xs.half() if half else xs
    if col_block is None:
        col_block = _col_block(dev, row_block, n, tiles.element_size())
    cap = min(int(max_neighbors), n)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    held, prune_at = 0, PRUNE_AT
    starts = range(0, n, row_block)
    with _full_precision_accumulation(), torch.inference_mode():
        for r0 in progress(starts, desc="threshold graph (torch)", total=len(starts), unit="block"):
            r1 = min(r0 + row_block, n)
            rows_t = tiles[r0:r1]
            for c0 in range(r0, n, col_block):  # the upper triangle: columns from the block's first row on
                c1 = min(c0 + col_block, n)
                scores = rows_t @ tiles[c0:c1].T
                hit_rows = torch.nonzero(scores.amax(dim=1) >= low).squeeze(1)
                if hit_rows.numel() == 0:
                    continue
                ri, ci = torch.nonzero(scores[hit_rows] >= low, as_tuple=True)
                a, b = hit_rows[ri] + r0, ci + c0
                upper = a < b
                a, b = a[upper], b[upper]
                exact = _exact_scores(xs, a, b)
                ok = exact >= threshold
                found_i.append(a[ok].cpu().numpy())
                found_j.append(b[ok].cpu().numpy())
                found_s.append(exact[ok].cpu().numpy())
                held += int(ok.sum())
                if held > prune_at:  # bound memory on data with huge clusters (cap_pairs never drops a kept pair)
                    i, j, s, _ = cap_pairs(*_joined(found_i, found_j, found_s), n, cap)
                    found_i, found_j, found_s, held = [i], [j], [s], i.size
                    prune_at = max(PRUNE_AT, 2 * held)
    i, j, s = _joined(found_i, found_j, found_s)
    i, j, s, truncated = cap_pairs(i, j, s, n, cap)
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.float32), truncated


def _joined(a: list, b: list, c: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not a:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(a), np.concatenate(b), np.concatenate(c)


def _exact_scores(xs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """float32 inner products ``xs[a]·xs[b]``, in chunks of pairs."""
    if a.numel() == 0:
        return torch.empty(0, dtype=torch.float32, device=xs.device)
    return torch.cat([(xs[a[k:k + chunk]] * xs[b[k:k + chunk]]).sum(dim=1) for k in range(0, a.numel(), chunk)])


def _col_block(dev: torch.device, row_block: int, n: int, itemsize: int) -> int:
    """Columns per tile: up to ``CPU_COL_BLOCK`` on a CPU; on CUDA as many as a quarter of the free memory holds (the
    tile, its row maxima and one boolean mask), a multiple of 1024."""
    if dev.type != "cuda":
        return max(1, min(n, CPU_COL_BLOCK))
    free, _ = torch.cuda.mem_get_info(dev)
    cols = int(free // 4 // (row_block * (itemsize + 1)))
    return max(1024, min(n, cols // 1024 * 1024))
