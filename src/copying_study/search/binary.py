"""faiss binary indexes for PDQ hashes: exact Hamming search behind the float indexes' interface.

A ``BinarySearchIndex`` is a ``SearchIndex`` whose ``search`` takes PDQ's ±1/16 vectors (or the packed bits) and
returns similarities ``1 - 2·hamming/256``, the inner products of the ±1/16 vectors, so ``knn``,
``threshold_pairs`` and their callers work unchanged. ``build_index`` builds one when the descriptor meta says
``metric: hamming`` (PDQ's does) or when asked with ``metric="hamming"``.

Kinds: ``flat`` (``IndexBinaryFlat``, exact), ``ivf`` (``IndexBinaryIVF``, approximate; binary k-means on a seeded
sample), ``hnsw`` (``IndexBinaryHNSW``, approximate) and ``hash`` (``IndexBinaryMultiHash``: 16 tables of 16-bit
substrings, probed with ``radius // 16`` bit flips; by the pigeonhole principle it finds every hash within Hamming
``radius`` of a query, so the threshold self-join at that radius is exact while each query visits only a few
buckets; beyond the radius its neighbours are approximate).

Ties: neighbours are ordered by (Hamming distance, row id). faiss does not promise an order among equal distances, so
when the k-th distance equals the last one fetched, the row is searched again with more neighbours until the tie
group is complete; the result equals a brute-force ``lexsort`` whatever faiss's internal order.

The helpers between packed bits and ±1/16 vectors live here (no torch import); ``copying_study.descriptors.pdq``
re-exports them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from copying_study.search.index import SearchIndex
from copying_study.utils.seeding import derive_seed, numpy_rng

logger = logging.getLogger(__name__)

BITS = 256
BYTES = BITS // 8
SCALE = 1.0 / 16.0  # ±1/16 per bit: unit-norm rows
MATCH_HAMMING = 31  # PDQ's standard match rule: hamming <= 31


def similarity_from_hamming(hamming: np.ndarray | int) -> np.ndarray:
    """``1 - 2·hamming/256`` as float32 (exact: the inner product of the ±1/16 vectors)."""
    return (1.0 - np.asarray(hamming, dtype=np.float64) * (2.0 / BITS)).astype(np.float32)


def hamming_radius(threshold: float) -> int:
    """The largest Hamming distance whose similarity is ``>= threshold`` (-1 when none is)."""
    return int(np.floor((1.0 - float(threshold)) * BITS / 2.0))


def vectors_from_bits(bits: np.ndarray) -> np.ndarray:
    """Packed hashes uint8 [N, 32] → float32 [N, 256] of ±1/16 (bit 1 → +1/16), rows of unit norm."""
    b = check_bits(bits)
    signs = np.unpackbits(b, axis=1).astype(np.float32) * 2.0 - 1.0
    return signs * np.float32(SCALE)


def bits_from_vectors(vectors: np.ndarray, what: str = "PDQ vectors") -> np.ndarray:
    """float [N, 256] of ±1/16 → packed uint8 [N, 32]; ``ValueError`` if any entry is not exactly ±1/16."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != BITS:
        raise ValueError(f"{what} must be [N, {BITS}]; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) or not (np.abs(x) == SCALE).all():
        raise ValueError(f"{what} are not PDQ hashes: every entry must be exactly +1/16 or -1/16 "
                         "(were they made by another descriptor?)")
    return np.packbits(x > 0, axis=1)


def check_bits(bits: np.ndarray, what: str = "PDQ hashes") -> np.ndarray:
    """``bits`` as C-contiguous uint8 [N, 32]; ``ValueError`` otherwise."""
    b = np.asarray(bits)
    if b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] != BYTES:
        raise ValueError(f"{what} must be packed uint8 [N, {BYTES}]; got {b.dtype} {b.shape}")
    return np.ascontiguousarray(b)


BINARY_INDEX_KINDS = ("flat", "ivf", "hnsw", "hash")
HASH_TABLES = 16  # IndexBinaryMultiHash: 16 substrings of 16 bits cover all 256 bits
MAX_HASH_FLIPS = 3  # 697 probes per table; larger radii belong in a flat index
RESULTS_PER_CALL = 1 << 22  # memory bound of one faiss call in the tie resolution (rows x neighbours)
_MISSING = BITS + 1  # sorts after every real distance


def as_bits(x: Any, what: str = "PDQ hashes") -> np.ndarray:
    """Packed uint8 [N, 32] from packed bits or from PDQ's ±1/16 float vectors [N, 256]; ``ValueError`` when
    empty or neither."""
    arr = np.asarray(x)
    bits = check_bits(arr, what) if arr.dtype == np.uint8 else bits_from_vectors(arr, what)
    if bits.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 rows): nothing to search")
    return bits


class BinarySearchIndex(SearchIndex):
    """A faiss binary index over PDQ hashes; ``search`` answers on the ±1/16 similarity scale.

    ``exact_radius``: every row within this Hamming distance of a query is found (``None`` = no guarantee;
    ``flat`` finds everything).
    """

    metric = "hamming"

    def __init__(self, index: Any, kind: str, meta: Mapping[str, Any] | None, settings: dict,
                 exact_radius: int | None) -> None:
        super().__init__(index, kind, BITS, meta, settings)
        self.exact_radius = exact_radius

    def check_queries(self, queries: Any, queries_meta: Mapping[str, Any] | None = None) -> np.ndarray:
        """Packed query bits; a ``queries_meta`` must describe the same descriptor as the index's meta."""
        if queries_meta is not None and self.meta is not None:
            from copying_study.descriptors import check_same_descriptor

            check_same_descriptor(queries_meta, self.meta, "queries", "index")
        return as_bits(queries, "queries")

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` similarities (float32, ``-inf`` where missing) and row ids (``-1`` where missing)."""
        hamming, ids = self.search_hamming(queries, k)
        sims = similarity_from_hamming(hamming)
        sims[ids < 0] = -np.inf
        return sims, ids

    def search_hamming(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` Hamming distances (int32, ``257`` where missing) and row ids (int64, ``-1``), ordered by
        (distance, id); ties at the k-th place are resolved by searching those rows again with more neighbours."""
        q = as_bits(queries, "queries")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = self.ntotal
        out_d = np.full((len(q), k), _MISSING, dtype=np.int32)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        kk = min(k, n)
        rows = np.arange(len(q))
        fetch = min(n, 2 * kk + 8)
        while rows.size:
            step = max(1, RESULTS_PER_CALL // fetch)
            unresolved = []
            for start in range(0, rows.size, step):
                part = rows[start : start + step]
                d, i = self._search_sorted(q[part], fetch)
                out_d[part, :kk], out_i[part, :kk] = d[:, :kk], i[:, :kk]
                # the k-th distance reaches the last one fetched: more rows at that distance may exist unseen
                open_tie = (d[:, kk - 1] == d[:, -1]) & (i[:, -1] >= 0)
                unresolved.append(part[open_tie])
            rows = np.concatenate(unresolved) if fetch < n else np.empty(0, np.int64)
            fetch = min(n, 4 * fetch)
        return out_d, out_i

    def _search_sorted(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.index.search(q, int(k))
        d = np.where(i < 0, _MISSING, d).astype(np.int32)
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)
        return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1).astype(np.int64)

    def check_radius(self, threshold: float) -> None:
        """``ValueError`` when a ``hash`` index cannot guarantee every pair at ``threshold`` (its radius is
        smaller); other kinds are exact (``flat``) or approximate by choice (``ivf``, ``hnsw``)."""
        need = hamming_radius(threshold)
        if self.kind == "hash" and self.exact_radius is not None and need > self.exact_radius:
            raise ValueError(f"the hash index finds every pair only up to Hamming {self.exact_radius}, but threshold "
                             f"{threshold} needs Hamming <= {need}: build it with hash_radius >= {need}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "metric": self.metric, "exact_radius": self.exact_radius}


def build_binary_index(
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
    hash_radius: int = MATCH_HAMMING,
    use_gpu: str | bool = "auto",
) -> BinarySearchIndex:
    """A faiss binary index over PDQ hashes (``base``: ±1/16 vectors [N, 256] or packed bits [N, 32]).

    ``kind``: ``flat`` (exact), ``ivf`` (``nlist`` lists, default ≈ 4·√N, ``nprobe`` searched, binary k-means on
    ``train_size`` rows sampled with ``seed``), ``hnsw`` (``hnsw_m`` links, ``ef_search``) or ``hash``
    (multi-index hashing, exact up to Hamming ``hash_radius``, default PDQ's 31). Binary indexes run on the CPU;
    ``use_gpu=True`` is refused with a WARNING and the settings record ``device: cpu``.
    """
    if kind not in BINARY_INDEX_KINDS:
        raise ValueError(f"unknown binary search index '{kind}': choose one of {', '.join(BINARY_INDEX_KINDS)}")
    x = as_bits(base, "index base hashes")
    if meta is not None and meta.get("dim") not in (None, BITS):
        raise ValueError(f"descriptor meta says dim {meta.get('dim')} but binary indexes hold {BITS}-bit hashes")
    n = x.shape[0]
    settings: dict[str, Any] = {}
    exact_radius: int | None = BITS if kind == "flat" else None
    if kind == "flat":
        index = faiss.IndexBinaryFlat(BITS)
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))
        if not 1 <= nlist <= n:
            raise ValueError(f"search.nlist must be in [1, N={n}], got {nlist}")
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(BITS), BITS, nlist)
        index.cp.seed = derive_seed(seed, "search", "binary_ivf_kmeans") % (2**31)
        m = min(n, int(train_size or 64 * nlist))
        sample = x if m >= n else x[np.sort(numpy_rng(seed, "search", "binary_ivf_train").choice(n, m, replace=False))]
        index.train(sample)
        index.nprobe = int(min(nprobe, nlist))
        settings = {"nlist": nlist, "nprobe": int(index.nprobe), "train_size": m}
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(BITS, int(hnsw_m))
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        settings = {"hnsw_m": int(hnsw_m), "ef_search": int(ef_search), "ef_construction": int(ef_construction)}
    else:
        radius = int(hash_radius)
        flips = radius // HASH_TABLES
        if radius < 0 or flips > MAX_HASH_FLIPS:
            raise ValueError(f"hash_radius must be in [0, {HASH_TABLES * (MAX_HASH_FLIPS + 1) - 1}] for the hash "
                             f"index, got {hash_radius}: use the flat index for larger radii")
        index = faiss.IndexBinaryMultiHash(BITS, HASH_TABLES, BITS // HASH_TABLES)
        index.nflip = flips
        exact_radius = radius
        settings = {"tables": HASH_TABLES, "bits_per_table": BITS // HASH_TABLES, "nflip": flips,
                    "exact_radius": radius}
    if use_gpu is True:
        logger.warning("binary (Hamming) indexes run on the CPU in this project; search.use_gpu is ignored")
    settings["device"] = "cpu"
    index.add(x)
    return BinarySearchIndex(index, kind, meta, settings, exact_radius)
