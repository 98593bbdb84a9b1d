"""The Dask engine of dedup_clusters (``copying_study.search.sharded``) on a 2-worker LocalCluster: the same
descriptors, pairs and cluster table as the single-process path, and clear errors for bad settings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from copying_study.data import dedup
from copying_study.descriptors import EncodedImages, load_descriptor
from copying_study.schemas import DedupParams
from copying_study.schemas._base import ParameterError
from copying_study.search import threshold_pairs
from copying_study.search.sharded import dask_client, sharded_descriptors, sharded_threshold_pairs
from tests.conftest import make_training_set

THRESHOLD = 0.75  # the default descriptor's dedup threshold
N, DIM = 3000, 64
WHITENING = {"dim": 16, "n_reference": 200}  # a whitening fitted in a second, not the default's ~20 s


@pytest.fixture(scope="module")
def client():
    """Not the default client: ``dedup.distributed: true`` must find no client unless a test makes this one current."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    """N seeded random unit vectors (distinct ones score below 0.6 in 64-d) with 40 planted groups of 2-8 near
    copies of one row at noise levels whose scores straddle the threshold, and one dense group of 60 (each member
    has 59 matches: more than a small max_neighbors)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    rows = rng.permutation(N)
    start = 0
    for size, noise in [(s, rng.uniform(0.2, 0.8)) for s in (2, 3, 4, 5, 8) * 8] + [(60, 0.3)]:
        members = rows[start:start + size]
        start += size
        x[members[1:]] = x[members[0]] + noise * rng.standard_normal((size - 1, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def params(**overrides) -> dict:
    return DedupParams.from_params({"threshold": THRESHOLD, **overrides}).as_dict()


@pytest.mark.parametrize("shard_size", [700, N])
@pytest.mark.parametrize("max_neighbors", [2048, 16])
def test_sharded_pairs_equal_threshold_pairs(client, planted, tmp_path, shard_size, max_neighbors):
    """Shards that do not divide N and one shard; with max_neighbors 16 the dense group's rows keep their top 16."""
    i0, j0, s0 = threshold_pairs(planted, THRESHOLD, k_start=4, max_neighbors=max_neighbors)
    i, j, s = sharded_threshold_pairs(client, planted, THRESHOLD, None, shard_size, tmp_path,
                                      max_neighbors=max_neighbors)
    assert i0.size > 500  # the planted groups give real edges
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(j, j0)
    np.testing.assert_allclose(s, s0, rtol=0, atol=1e-6)
    dense = np.sort(np.bincount(np.concatenate([i, j]), minlength=N))[-60:]  # the other groups' degrees are <= 7
    if max_neighbors == 2048:
        assert (dense == 59).all()
    else:  # each member keeps its own top 16, plus the members whose top 16 it is in
        assert dense.min() >= 16 and dense.min() < 59
    shards = -(-N // shard_size)
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) == shards * (shards + 1) // 2  # the upper triangle of query shard x index shard
    for f in files:
        edges = pq.read_table(f).to_pandas()
        assert (edges["i"] < edges["j"]).all() and (edges["s"] >= THRESHOLD).all()


def test_sharded_ivf_equals_single_process_ivf(client, planted, tmp_path):
    """The quantiser trained once on build_index's seeded sample, shards added in parallel: the same pairs."""
    i0, j0, _ = threshold_pairs(planted, THRESHOLD, kind="ivf", nlist=16, nprobe=2)
    i, j, _ = sharded_threshold_pairs(client, planted, THRESHOLD, None, 1100, tmp_path, kind="ivf", nlist=16,
                                      nprobe=2)
    exact, _, _ = threshold_pairs(planted, THRESHOLD)
    assert i0.size < exact.size  # nprobe 2 of 16 lists misses pairs: the comparison is of the approximate search
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(j, j0)


@pytest.mark.parametrize("kind", ["flat", "hash"])
def test_binary_descriptors_give_the_exact_binary_pairs(client, tmp_path, kind):
    """PDQ-like ±1/16 vectors (meta metric hamming): the float search of the shards gives the binary index's pairs
    and its exact scores; the planted copies have ~26 of 256 bits flipped, around the 31-bit rule."""
    from copying_study.search.binary import vectors_from_bits

    rng = np.random.default_rng(1)
    bits = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    bits[200:] = bits[:200] ^ np.packbits(rng.random((200, 256)) < 0.1, axis=1)
    x, meta, t = vectors_from_bits(bits), {"metric": "hamming"}, 0.7578125
    i0, j0, s0 = threshold_pairs(x, t, meta=meta, kind=kind)
    i, j, s = sharded_threshold_pairs(client, x, t, meta, 150, tmp_path, kind=kind)
    assert 50 < i0.size < 200
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(j, j0)
    assert s.tobytes() == s0.tobytes()


def test_cluster_table_is_the_same_on_every_engine(client, planted, caplog):
    """Single process, ``true`` with the current client, and ``auto`` inside a Dask task (the DaskRunner's case:
    worker_client secedes the task, so its sub-tasks run on both single-threaded workers)."""
    ids = [f"img{k}" for k in range(N)]
    p = params(distributed_shard_size={"search": 1234}, search={"k_start": 4, "max_neighbors": 16})
    with caplog.at_level(logging.DEBUG, logger="copying_study.data.dedup"):
        single = dedup.find_clusters(planted, ids, {**p, "distributed": "auto"})  # no worker here: this process
        with client.as_current():
            on_dask = dedup.find_clusters(planted, ids, {**p, "distributed": True})
    engines = [r.getMessage() for r in caplog.records if "engine" in r.getMessage()]
    assert engines[0].startswith("threshold graph: engine single process")
    assert engines[1].startswith("threshold graph: engine dask (2 workers, shards of 1234 rows")
    in_worker = client.submit(dedup.find_clusters, planted, ids, {**p, "distributed": "auto"}).result()
    assert single["cluster_size"].max() == 60 and (single["cluster_size"] > 1).sum() == 236
    pd.testing.assert_frame_equal(on_dask, single)
    pd.testing.assert_frame_equal(in_worker, single)


def test_auto_uses_dask_only_inside_a_worker(client):
    def engine() -> bool:
        with dask_client("auto") as c:
            return c is not None

    assert engine() is False
    assert client.submit(engine).result() is True


@pytest.mark.parametrize("spec", [{"name": "default", "batch_size": 8, "whitening": WHITENING}, {"name": "pdq"}])
def test_sharded_descriptors_give_the_same_bytes(client, spec):
    """Shards of 12 images round up to 2 batches of 8 (the same batches as encode_rows); pdq brings its row info.
    Each worker loads the descriptor once, whatever the number of shards it ran."""
    table = make_training_set(n=40, size=48)
    images = table["image"].tolist()
    descriptor = load_descriptor(spec, device="cpu")
    expected, expected_rows = descriptor.encode_rows(EncodedImages(images))
    embeddings, row_info, meta = sharded_descriptors(client, images, spec, "cpu", 12)
    assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
    assert embeddings.tobytes() == expected.tobytes()
    assert row_info.keys() == expected_rows.keys()
    for key, value in expected_rows.items():
        np.testing.assert_array_equal(row_info[key], value)
    assert meta == descriptor.meta()
    loaded = client.run(lambda: [k for k in __import__("copying_study.search.sharded", fromlist=["_"])._DESCRIPTORS
                                 if f'"name": "{spec["name"]}"' in k])
    assert all(len(keys) <= 1 for keys in loaded.values()) and any(loaded.values())


def test_node_outputs_do_not_depend_on_the_engine(client):
    """compute_train_descriptors + find_duplicate_clusters through the nodes, with the default descriptor."""
    from copying_study.pipelines.dedup_clusters import nodes

    table = make_training_set(n=30, size=48)
    p = {"descriptor": {"name": "default", "batch_size": 4, "whitening": WHITENING},
         "distributed_shard_size": {"descriptors": 5, "search": 7}}
    single = nodes.compute_train_descriptors(table, {**p, "distributed": False}, "cpu")
    with client.as_current():
        on_dask = nodes.compute_train_descriptors(table, {**p, "distributed": True}, "cpu")
        clusters_dask = nodes.find_duplicate_clusters(on_dask, table, {**p, "distributed": True})
    clusters = nodes.find_duplicate_clusters(single, table, {**p, "distributed": False})
    assert on_dask.keys() == single.keys() and on_dask["meta"] == single["meta"]
    assert on_dask["embeddings"].tobytes() == single["embeddings"].tobytes()
    assert on_dask["image_ids"] == single["image_ids"]
    pd.testing.assert_frame_equal(clusters_dask, clusters)
    # as DaskRunner runs the node: in a worker (at its thread counts, so its own whitening fit), auto -> Dask
    in_worker = [client.submit(nodes.compute_train_descriptors, table, {**p, "distributed": engine}, "cpu").result()
                 for engine in ("auto", False)]
    assert in_worker[0]["embeddings"].tobytes() == in_worker[1]["embeddings"].tobytes()
    assert in_worker[0]["meta"] == in_worker[1]["meta"]
    for _, rows in clusters[table["planted_cluster"].to_numpy() >= 0].groupby(table["planted_cluster"]):
        assert rows["cluster_id"].nunique() == 1  # each planted group of exact copies is in one cluster


def test_bad_shard_sizes_name_the_parameter(client, planted, tmp_path):
    with pytest.raises(ValueError, match=r"dedup\.distributed_shard_size\.search must be an integer >= 1, got 0"):
        sharded_threshold_pairs(client, planted, THRESHOLD, None, 0, tmp_path)
    with pytest.raises(ValueError, match=r"dedup\.distributed_shard_size\.descriptors must be .* got -3"):
        sharded_descriptors(client, [b"x"], {"name": "default"}, "cpu", -3)
    with pytest.raises(ParameterError, match=r"dedup\.distributed_shard_size\.search = 0: expected a value greater "
                                             r"than or equal to 1"):
        params(distributed_shard_size={"search": 0})
    with pytest.raises(ParameterError, match=r"dedup\.distributed = 'yes': expected auto, true or false"):
        params(distributed="yes")
    assert params()["distributed"] == "auto"
    assert params()["distributed_shard_size"] == {"descriptors": 2048, "search": 50_000}


def test_distributed_true_without_a_client_is_a_clear_error(planted):
    with pytest.raises(ValueError, match=r"dedup\.distributed is true but this process has no Dask client"):
        dedup.find_clusters(planted, [str(k) for k in range(N)], params(distributed=True))


def test_unsharded_index_kinds_run_in_this_process(client, planted, caplog, tmp_path):
    """hnsw has no sharded search: on the Dask engine it falls back to this process with a warning."""
    p = params(distributed=True, search={"index": "hnsw"})
    with caplog.at_level(logging.DEBUG, logger="copying_study.data.dedup"), client.as_current():
        table = dedup.find_clusters(planted[:500], [str(k) for k in range(500)], p)
    assert "search.index 'hnsw' has no sharded search" in caplog.text
    assert "threshold graph: engine single process" in caplog.text and len(table) == 500
    with pytest.raises(ValueError, match="not 'hnsw'"):
        sharded_threshold_pairs(client, planted, THRESHOLD, None, 100, Path(tmp_path), kind="hnsw")
