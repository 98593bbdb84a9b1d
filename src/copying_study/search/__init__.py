"""Similarity search over L2-normalised descriptors with faiss, and duplicate clusters.

>>> scores, idx = knn(queries, base, k=10)                   # exact inner product, chunked
>>> scores, idx = knn(X, X, k=1, exclude_self=True)          # nearest OTHER row (self removed by index)
>>> index = build_index(base, kind="ivf", nprobe=16)         # approximate, for large N; reuse with knn(q, index)
>>> i, j, s = threshold_pairs(X, threshold=0.7)              # pairs i<j with X[i]·X[j] >= 0.7, memory O(N·k)
>>> i, j, s = threshold_pairs(X, 0.7, backend="torch")       # the same on CUDA without faiss-gpu (torch_join.py)
>>> labels = connected_clusters(len(X), i, j)                # 0 = largest cluster; singletons get their own id

PDQ hashes (descriptor meta ``metric: hamming``, or ``metric="hamming"``) are searched with faiss's binary indexes
(``copying_study.search.binary``); the calls and the similarity scale (``1 - 2·hamming/256``) stay the same.
"""

from copying_study.search.binary import BINARY_INDEX_KINDS, BinarySearchIndex, build_binary_index
from copying_study.search.graph import cluster_sizes, connected_clusters
from copying_study.search.index import INDEX_KINDS, SearchIndex, as_descriptors, build_index, gpu_available
from copying_study.search.neighbours import BACKENDS, check_threshold, knn, threshold_pairs

__all__ = [
    "BACKENDS",
    "BINARY_INDEX_KINDS",
    "BinarySearchIndex",
    "INDEX_KINDS",
    "SearchIndex",
    "as_descriptors",
    "build_binary_index",
    "build_index",
    "check_threshold",
    "cluster_sizes",
    "connected_clusters",
    "gpu_available",
    "knn",
    "threshold_pairs",
]
