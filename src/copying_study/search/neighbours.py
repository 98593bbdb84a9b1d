"""k-nearest-neighbour search and the threshold graph (self-join), in chunks so memory stays O(N·k)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from copying_study.search.binary import BinarySearchIndex, hamming_radius
from copying_study.search.index import SearchIndex, as_descriptors, build_index, gpu_available, metric_of
from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [-1, 1] (cosine range); ``ValueError`` otherwise."""
    t = float(threshold)
    if not -1.0 <= t <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return t


def _index_for(base: Any, exact: bool, base_meta: Mapping[str, Any] | None, index_kwargs: dict) -> SearchIndex:
    if isinstance(base, SearchIndex):
        return base
    return build_index(base, kind="flat" if exact else index_kwargs.pop("kind", "ivf"), meta=base_meta,
                       **index_kwargs)


def knn(
    queries: Any,
    base: Any,
    k: int = 10,
    exact: bool = True,
    exclude_self: bool = False,
    chunk_size: int = 8192,
    queries_meta: Mapping[str, Any] | None = None,
    base_meta: Mapping[str, Any] | None = None,
    **index_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` most similar ``base`` rows for each query: ``scores`` float32 [Q, k], ``idx`` int64 [Q, k].

    ``base`` is an array [N, d] (an exact ``flat`` index is built, or ``ivf``/``hnsw`` when ``exact=False``; extra
    keyword arguments go to ``build_index``) or a ``SearchIndex``. ``exclude_self=True`` means the queries ARE the
    base rows in the same order: each row's own index is removed by position (not by score, so exact duplicates
    elsewhere still count). Missing neighbours (k > N) are ``-1`` with score ``-inf``. With both metas given (or the
    index's meta), a different descriptor raises ``ValueError``. A meta with ``metric: hamming`` (PDQ; the base's,
    else the queries') or ``metric="hamming"`` searches a faiss binary index: same shapes and similarity scale,
    neighbours ordered by (distance, row id).
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if base_meta is not None and queries_meta is not None:
        from copying_study.descriptors import check_same_descriptor

        check_same_descriptor(queries_meta, base_meta, "queries", "base")
    index_kwargs["metric"] = metric_of(base_meta or queries_meta, index_kwargs.get("metric"))
    index = _index_for(base, exact, base_meta, dict(index_kwargs))
    q = index.check_queries(queries, queries_meta)
    if exclude_self and q.shape[0] != index.ntotal:
        raise ValueError(f"exclude_self needs queries == base rows; got {q.shape[0]} queries for {index.ntotal} rows")
    k = int(k)
    kk = k + 1 if exclude_self else k
    scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    idx = np.full((q.shape[0], k), -1, dtype=np.int64)
    starts = range(0, q.shape[0], int(chunk_size))
    for start in progress(starts, desc="knn search", total=len(starts), unit="chunk"):
        d, i = index.search(q[start : start + chunk_size], min(kk, index.ntotal))
        if exclude_self:
            d, i = _drop_rows_self(d, i, start, k)
        scores[start : start + len(d), : d.shape[1]] = d
        idx[start : start + len(i), : i.shape[1]] = i
    idx[idx < 0] = -1
    scores[idx < 0] = -np.inf
    return scores, idx


def _drop_rows_self(d: np.ndarray, i: np.ndarray, offset: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (row r of the chunk is base row ``offset + r``); keep at most ``k`` columns."""
    own = (offset + np.arange(len(i)))[:, None]
    is_self = i == own
    # rows where self was not returned (many exact ties): drop the last column instead
    drop_last = ~is_self.any(axis=1)
    is_self[drop_last, -1] = True
    keep = ~is_self
    width = i.shape[1] - 1
    return d[keep].reshape(len(d), width)[:, :k], i[keep].reshape(len(i), width)[:, :k]


def threshold_pairs(
    x: Any,
    threshold: float = 0.7,
    *,
    index: SearchIndex | None = None,
    k_start: int = 32,
    max_neighbors: int = 2048,
    chunk_size: int = 8192,
    meta: Mapping[str, Any] | None = None,
    backend: str = "faiss",
    **index_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``x[i]·x[j] >= threshold``: arrays ``i``, ``j`` (int64) and ``s`` (float32).

    ``backend="faiss"``: a self-join in chunks of ``chunk_size`` queries: each chunk asks for ``k_start``
    neighbours, and the rows whose last neighbour is still above the threshold ask again with 4× more, up to
    ``max_neighbors``. Memory is O(chunk_size·k + pairs), never N×N. ``index`` (built on ``x``) or
    ``index_kwargs`` (for ``build_index``: ``kind="flat"|"ivf"|"hnsw"``, ``use_gpu``, ...) choose the search;
    approximate indexes may miss pairs but never report a wrong score.

    ``backend="torch"``: the same exact pairs from float16 tensor-core tiles rescored in float32
    (:mod:`copying_study.search.torch_join`), on CUDA when torch sees it: for GPUs whose faiss build has no GPU
    support. ``backend="auto"``: faiss on the GPU if it can, else torch on CUDA if present, else faiss on the CPU.

    Either way a row with more than ``max_neighbors`` matches keeps its top ones (a WARNING says how many rows;
    connectivity inside such a dense cluster is kept by the other members' edges).
    With ``meta`` saying ``metric: hamming`` (PDQ) or ``metric="hamming"`` the faiss search runs on a binary index
    (``hash`` kind: built exact at this threshold's Hamming radius); pairs and scores are the same as the inner
    products would give.
    """
    t = check_threshold(threshold)
    xs = as_descriptors(x, "descriptors")
    n = xs.shape[0]
    if choose_backend(backend, index, index_kwargs) == "torch":
        from copying_study.search.torch_join import torch_threshold_pairs

        if int(max_neighbors) < 1:
            raise ValueError(f"need max_neighbors >= 1, got {max_neighbors}")
        i, j, s, truncated = torch_threshold_pairs(xs, t, max_neighbors=int(max_neighbors))
        _warn_truncated(truncated, min(int(max_neighbors), n), t)
        return _unique_pairs(i, j, s, n)
    if index is None:
        if metric_of(meta, index_kwargs.get("metric")) == "hamming" and index_kwargs.get("kind") == "hash":
            index_kwargs.setdefault("hash_radius", max(0, hamming_radius(t)))
        index = build_index(xs, meta=meta, **index_kwargs)
    elif index.ntotal != n or index.dim != xs.shape[1]:
        raise ValueError(f"the index holds {index.ntotal}x{index.dim} descriptors but x is {n}x{xs.shape[1]}")
    if isinstance(index, BinarySearchIndex):
        index.check_radius(t)
    if int(k_start) < 1 or int(max_neighbors) < int(k_start):
        raise ValueError(f"need 1 <= k_start <= max_neighbors, got {k_start} and {max_neighbors}")
    cap = min(int(max_neighbors), n)
    found_i, found_j, found_s = [], [], []
    truncated = 0
    starts = range(0, n, int(chunk_size))
    for start in progress(starts, desc="threshold graph", total=len(starts), unit="chunk"):
        rows = np.arange(start, min(start + chunk_size, n))
        k = min(int(k_start) + 1, n)  # +1: the row itself
        while rows.size:
            d, nb = index.search(xs[rows], k)
            hit = (d >= t) & (nb >= 0)
            full = hit[:, -1] & (k < cap + 1) & (k < n)  # all k neighbours above threshold: look further
            done = ~full
            r_idx, c_idx = np.nonzero(hit & done[:, None])
            found_i.append(rows[r_idx])
            found_j.append(nb[r_idx, c_idx])
            found_s.append(d[r_idx, c_idx])
            if k >= min(cap + 1, n):
                truncated += int(hit[:, -1].sum()) if k < n else 0
                break
            rows = rows[full]
            k = min(4 * k, cap + 1, n)
    _warn_truncated(truncated, cap, t)
    i = np.concatenate(found_i) if found_i else np.empty(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.empty(0, np.int64)
    s = np.concatenate(found_s) if found_s else np.empty(0, np.float32)
    return _unique_pairs(i, j, s, n)


BACKENDS = ("faiss", "torch", "auto")


def choose_backend(backend: str, index: SearchIndex | None, index_kwargs: Mapping[str, Any]) -> str:
    """``faiss`` or ``torch`` for :func:`threshold_pairs` (see there); ``ValueError`` for a combination that cannot
    run (torch is exact: it takes no prebuilt index and no approximate index kind)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown self-join backend '{backend}': choose one of {', '.join(BACKENDS)}")
    exact = index_kwargs.get("kind", "flat") == "flat" and index is None
    if backend == "torch" and not exact:
        raise ValueError("the torch self-join backend is exact: it takes neither a prebuilt index nor "
                         f"kind={index_kwargs.get('kind')!r} (use backend faiss for approximate search)")
    if backend == "auto":
        import torch

        use_gpu = index_kwargs.get("use_gpu", "auto")
        backend = "torch" if (exact and use_gpu is not False and not gpu_available()
                              and torch.cuda.is_available()) else "faiss"
        logger.info("threshold graph: backend auto -> %s%s", backend,
                    " (faiss has no GPU support here; torch sees CUDA)" if backend == "torch" else "")
    return backend


def _warn_truncated(truncated: int, cap: int, t: float) -> None:
    if truncated:
        logger.warning("threshold graph: %d row(s) have more than max_neighbors=%d matches above %.3f; kept the "
                       "top %d of each", truncated, cap, t, cap)


def _unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs as ``i < j``, self pairs dropped, each once, sorted by ``(i, j)``."""
    keep = i != j
    i, j, s = i[keep], j[keep], s[keep]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo.astype(np.int64) * n + hi, return_index=True)
    return lo[first].astype(np.int64), hi[first].astype(np.int64), s[first].astype(np.float32)
