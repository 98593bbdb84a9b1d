"""Duplicate clusters = connected components of the threshold graph (scipy.sparse.csgraph)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def connected_clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cluster label per node (int64 [n]) of the undirected graph with edges ``i[e]—j[e]``.

    Labels are renumbered so cluster 0 is the largest, ties broken by the smallest member index; every node,
    including an isolated one (a singleton cluster), gets its own label.
    """
    n = int(n)
    if n < 1:
        raise ValueError("cannot cluster an empty set (n = 0)")
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if i.shape != j.shape:
        raise ValueError(f"edge arrays differ in length: {i.shape} vs {j.shape}")
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"edge endpoints must lie in [0, {n})")
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, raw = connected_components(graph, directed=False)
    sizes = np.bincount(raw)
    first = np.full(sizes.size, n, dtype=np.int64)
    np.minimum.at(first, raw, np.arange(n))
    order = np.lexsort((first, -sizes))  # largest first, then by first member
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[raw].astype(np.int64)


def cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """Size of each row's cluster (int64, same shape as ``labels``)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels)[labels]
