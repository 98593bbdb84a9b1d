"""faiss indexes over L2-normalised descriptors (inner product = cosine similarity).

``flat`` is exact (``IndexFlatIP``); ``ivf`` (``IndexIVFFlat``, k-means coarse quantiser trained on a seeded sample)
and ``hnsw`` (``IndexHNSWFlat``) are approximate but return exact inner products for the candidates they visit.
On a machine with faiss-gpu and a GPU, ``flat`` and ``ivf`` indexes are moved to the GPU (``use_gpu="auto"``).
Descriptors whose meta says ``metric: hamming`` (PDQ), or ``metric="hamming"``, get faiss's binary indexes instead
(``copying_study.search.binary``, which adds the ``hash`` kind) with the same interface and similarity scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from copying_study.utils.seeding import derive_seed, numpy_rng

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw", "hash")  # hash: binary (Hamming) descriptors only
METRICS = ("ip", "hamming")


def metric_of(meta: Mapping[str, Any] | None, metric: str | None = None) -> str:
    """The search metric: ``metric`` when given, else the descriptor meta's ``metric`` (PDQ: ``hamming``), else
    ``ip`` (inner product); ``ValueError`` for another value."""
    chosen = metric or (meta or {}).get("metric") or "ip"
    if chosen not in METRICS:
        raise ValueError(f"unknown search metric '{chosen}': choose one of {', '.join(METRICS)}")
    return chosen


def as_descriptors(x: Any, what: str = "descriptors", dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, d] array; ``ValueError`` if empty, not 2-D, of another dim, or not finite."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, d]; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 rows): nothing to search")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]} but the index holds {dim}-d descriptors")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr).all(axis=1)).sum())
        raise ValueError(f"{what} contain NaN or inf in {bad} row(s)")
    return arr


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class SearchIndex:
    """A faiss index plus what it holds: ``kind``, ``dim``, ``ntotal`` and the descriptor ``meta`` (may be None)."""

    def __init__(self, index: Any, kind: str, dim: int, meta: Mapping[str, Any] | None, settings: dict) -> None:
        self.index, self.kind, self.dim = index, kind, int(dim)
        self.meta = dict(meta) if meta else None
        self.settings = settings

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def check_queries(self, queries: Any, queries_meta: Mapping[str, Any] | None = None) -> np.ndarray:
        """Validated float32 queries; a ``queries_meta`` must describe the same descriptor as the index's meta."""
        if queries_meta is not None and self.meta is not None:
            from copying_study.descriptors import check_same_descriptor

            check_same_descriptor(queries_meta, self.meta, "queries", "index")
        return as_descriptors(queries, "queries", self.dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products and row ids (``-1`` where fewer than ``k`` were found)."""
        return self.index.search(queries, int(k))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "exact": self.exact, "ntotal": self.ntotal, "dim": self.dim, **self.settings}


def build_index(
    base: Any,
    kind: str = "flat",
    *,
    meta: Mapping[str, Any] | None = None,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 80,
    train_size: int | None = None,
    seed: int = 0,
    use_gpu: str | bool = "auto",
    metric: str | None = None,
    hash_radius: int = 31,
) -> SearchIndex:
    """An inner-product faiss index over ``base`` [N, d] float32.

    ``kind``: ``flat`` (exact), ``ivf`` (``nlist`` lists, default ≈ 4·√N; ``nprobe`` lists searched; trained on
    ``train_size`` rows sampled with ``seed``, default min(N, 64·nlist)) or ``hnsw`` (``hnsw_m`` links,
    ``ef_search``). ``meta`` is the descriptor meta, checked against queries later. When ``metric`` or the meta's
    ``metric`` is ``hamming`` (PDQ), a faiss binary index is built instead (``search.binary.build_binary_index``;
    ``hash_radius`` is for its ``hash`` kind).
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown search index '{kind}': choose one of {', '.join(INDEX_KINDS)}")
    if metric_of(meta, metric) == "hamming":
        from copying_study.search.binary import build_binary_index

        return build_binary_index(base, kind, meta=meta, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                                  ef_search=ef_search, ef_construction=ef_construction, train_size=train_size,
                                  seed=seed, hash_radius=hash_radius, use_gpu=use_gpu)
    if kind == "hash":
        raise ValueError("search index 'hash' is for binary (Hamming) descriptors such as pdq; choose flat, ivf or "
                         "hnsw for this descriptor")
    x = as_descriptors(base, "index base descriptors")
    if meta is not None and meta.get("dim") not in (None, x.shape[1]):
        raise ValueError(f"descriptor meta says dim {meta.get('dim')} but the base descriptors are {x.shape[1]}-d")
    n, d = x.shape
    settings: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))
        if not 1 <= nlist <= n:
            raise ValueError(f"search.nlist must be in [1, N={n}], got {nlist}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = derive_seed(seed, "search", "ivf_kmeans") % (2**31)
        m = min(n, int(train_size or 64 * nlist))
        sample = x if m >= n else x[np.sort(numpy_rng(seed, "search", "ivf_train").choice(n, m, replace=False))]
        index.train(sample)
        index.nprobe = int(min(nprobe, nlist))
        settings = {"nlist": nlist, "nprobe": int(index.nprobe), "train_size": m}
    else:
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        settings = {"hnsw_m": int(hnsw_m), "ef_search": int(ef_search), "ef_construction": int(ef_construction)}
    want_gpu = gpu_available() if use_gpu == "auto" else bool(use_gpu)
    if want_gpu and not gpu_available():
        raise RuntimeError("search.use_gpu is true but this faiss build has no GPU support or sees no GPU")
    if want_gpu and kind != "hnsw":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    settings["device"] = "gpu" if want_gpu and kind != "hnsw" else "cpu"
    index.add(x)
    return SearchIndex(index, kind, d, meta, settings)
