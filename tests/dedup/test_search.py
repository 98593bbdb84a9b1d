"""faiss search: exact kNN, the chunked threshold graph (against brute force), approximate recall, clusters."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from copying_study.search import build_index, cluster_sizes, connected_clusters, knn, threshold_pairs


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """600 random 32-d unit vectors plus planted groups of near duplicates (sizes 2..60)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 32))
    start = 0
    for size in (2, 3, 5, 8, 60):
        x[start + 1 : start + size] = x[start] + 0.15 * rng.standard_normal((size - 1, 32))
        start += size + 7
    x[300] = x[301]  # an exact duplicate
    return unit_rows(x)


def brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    i, j = np.nonzero(np.triu(x @ x.T >= t, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_knn_matches_brute_force(data):
    q = data[:50] + 0.01
    scores, idx = knn(q, data, k=5, chunk_size=16)
    sims = q @ data.T
    np.testing.assert_array_equal(idx[:, 0], sims.argmax(axis=1))
    np.testing.assert_allclose(scores, -np.sort(-sims, axis=1)[:, :5], atol=1e-5)
    assert scores.dtype == np.float32 and idx.dtype == np.int64


def test_knn_exclude_self_by_index_keeps_exact_duplicates(data):
    scores, idx = knn(data, data, k=3, exclude_self=True, chunk_size=100)
    assert not (idx == np.arange(len(data))[:, None]).any()
    assert idx[300, 0] == 301 and scores[300, 0] == pytest.approx(1.0, abs=1e-5)


def test_knn_more_neighbours_than_rows_are_padded():
    x = unit_rows(np.eye(3, 4) + 0.1)
    scores, idx = knn(x, x, k=5)
    assert (idx[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.95])
def test_threshold_pairs_equal_brute_force(data, threshold):
    i, j, s = threshold_pairs(data, threshold, k_start=2, chunk_size=64)  # k must grow for the 60-image group
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute_pairs(data, threshold)
    assert (i < j).all()
    np.testing.assert_allclose(s, np.einsum("nd,nd->n", data[i], data[j]), atol=1e-5)


def test_threshold_pairs_cap_warns_but_keeps_clusters_connected(data, caplog):
    with caplog.at_level(logging.WARNING):
        i, j, _ = threshold_pairs(data, 0.6, k_start=2, max_neighbors=4)
    assert "more than max_neighbors=4" in caplog.text
    full = connected_clusters(len(data), *threshold_pairs(data, 0.6)[:2])
    capped = connected_clusters(len(data), i, j)
    np.testing.assert_array_equal(capped, full)


def test_approximate_indexes_recall_and_exact_scores(data):
    truth = brute_pairs(data, 0.8)
    for kind, kwargs in (("ivf", {"nlist": 8, "nprobe": 4}), ("hnsw", {"hnsw_m": 16})):
        i, j, s = threshold_pairs(data, 0.8, kind=kind, **kwargs)
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        assert found <= truth  # never a wrong pair
        assert len(found) / len(truth) >= 0.95, kind
        np.testing.assert_allclose(s, np.einsum("nd,nd->n", data[i], data[j]), atol=1e-5)
    index = build_index(data, "ivf", nlist=8, nprobe=8, seed=1)
    assert index.describe()["nprobe"] == 8 and not index.exact
    _, idx = knn(data[:20], index, k=1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(20))


def test_connected_clusters_labels():
    labels = connected_clusters(7, np.array([0, 5, 1]), np.array([5, 6, 3]))
    assert labels[0] == labels[5] == labels[6] == 0  # largest cluster first
    assert labels[1] == labels[3] == 1
    assert len({labels[2], labels[4]}) == 2 and labels[2] not in (0, 1)  # singletons: their own ids
    np.testing.assert_array_equal(cluster_sizes(labels), [3, 2, 1, 2, 1, 3, 3])


def test_bad_inputs(data):
    with pytest.raises(ValueError, match="threshold must be a cosine similarity in \\[-1, 1\\]"):
        threshold_pairs(data, 1.5)
    bad = data.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 row"):
        threshold_pairs(bad, 0.7)
    with pytest.raises(ValueError, match="empty"):
        knn(data[:0], data)
    with pytest.raises(ValueError, match="dimension 16 but the index holds 32-d"):
        knn(data[:, :16], data)
    with pytest.raises(ValueError, match="unknown search index 'lsh'"):
        build_index(data, "lsh")
    with pytest.raises(ValueError, match="exclude_self needs queries == base"):
        knn(data[:5], data, exclude_self=True)
    with pytest.raises(ValueError, match="cannot cluster an empty set"):
        connected_clusters(0, np.array([]), np.array([]))


def test_descriptor_mismatch_between_queries_and_index(data):
    meta = {"name": "sscd", "dim": 32, "preprocessing": {"resize": 288}, "config": {}, "weights": {"sha256": "a"}}
    other = dict(meta, name="clip")
    index = build_index(data, meta=meta)
    with pytest.raises(ValueError, match="descriptor mismatch between queries and index: name"):
        knn(data[:2], index, queries_meta=other)
    with pytest.raises(ValueError, match="meta says dim 16"):
        build_index(data, meta=dict(meta, dim=16))


# -- the torch backend (GPUs without faiss-gpu): exact pairs from half-precision tiles rescored in float32 ---------


def near_threshold(t: float, n_pairs: int = 100, width: float = 2e-4, d: int = 64, seed: int = 5) -> np.ndarray:
    """Pairs of unit vectors whose cosine lies within ±width/2 of ``t``: where float16 rounding would decide."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_pairs):
        a = unit_rows(rng.standard_normal((1, d)))[0].astype(np.float64)
        u = rng.standard_normal(d)
        u -= u.dot(a) * a
        u /= np.linalg.norm(u)
        c = t + (k / (n_pairs - 1) - 0.5) * width
        rows += [a, c * a + np.sqrt(1 - c * c) * u]
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("threshold", [0.6, 0.95])
def test_torch_backend_finds_the_faiss_pairs_and_exact_scores(data, threshold, half):
    from copying_study.search.torch_join import torch_threshold_pairs

    expected = threshold_pairs(data, threshold)
    i, j, s, truncated = torch_threshold_pairs(data, threshold, half=half, row_block=128, col_block=200)
    order = np.lexsort((j, i))
    assert truncated == 0
    np.testing.assert_array_equal(i[order], expected[0])
    np.testing.assert_array_equal(j[order], expected[1])
    np.testing.assert_allclose(s[order], expected[2], atol=1e-6)
    via_api = threshold_pairs(data, threshold, backend="torch")
    for got, want in zip(via_api, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_torch_backend_half_precision_candidates_lose_no_pair_near_the_threshold():
    from copying_study.search.torch_join import torch_threshold_pairs

    x = near_threshold(0.7)
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(x @ x.T >= 0.7, 1)), strict=True)}

    def found(margin: float) -> set:
        i, j, _, _ = torch_threshold_pairs(x, 0.7, half=True, row_block=64, col_block=128, margin=margin)
        return set(zip(i.tolist(), j.tolist(), strict=True))

    assert len(want) == 50
    assert len(found(0.0)) < len(want)  # float16 alone misses pairs just above the threshold ...
    assert found(4e-3) == want  # ... the margin and the float32 rescoring find every one


def test_torch_backend_caps_rows_like_the_faiss_search(data, caplog):
    with caplog.at_level(logging.WARNING):
        i, j, s = threshold_pairs(data, 0.6, backend="torch", max_neighbors=4)
    assert "more than max_neighbors=4" in caplog.text
    fi, fj, _ = threshold_pairs(data, 0.6, k_start=2, max_neighbors=4)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(fi.tolist(), fj.tolist(), strict=True))


def test_cap_pairs_on_parts_then_whole_equals_whole():
    """The on-the-way pruning that bounds memory never drops a pair the final cap keeps."""
    from copying_study.search.torch_join import cap_pairs

    rng = np.random.default_rng(2)
    n, m = 30, 300
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = i < j
    i, j = i[keep], j[keep]
    _, first = np.unique(i * n + j, return_index=True)
    i, j = i[first], j[first]
    s = rng.random(i.size).astype(np.float32)
    whole = cap_pairs(i, j, s, n, 3)
    half_way = cap_pairs(i[: i.size // 2], j[: i.size // 2], s[: i.size // 2], n, 3)
    staged = cap_pairs(np.concatenate([half_way[0], i[i.size // 2:]]), np.concatenate([half_way[1], j[i.size // 2:]]),
                       np.concatenate([half_way[2], s[i.size // 2:]]), n, 3)
    assert whole[3] > 0
    assert set(zip(staged[0].tolist(), staged[1].tolist(), strict=True)) == set(
        zip(whole[0].tolist(), whole[1].tolist(), strict=True))


def test_backend_choice_and_bad_combinations(data):
    from copying_study.search.neighbours import choose_backend

    assert choose_backend("auto", None, {}) == "faiss"  # no CUDA here
    with pytest.raises(ValueError, match="unknown self-join backend 'cuda'"):
        threshold_pairs(data, 0.7, backend="cuda")
    with pytest.raises(ValueError, match="torch self-join backend is exact"):
        threshold_pairs(data, 0.7, backend="torch", kind="ivf")
