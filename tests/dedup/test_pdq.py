"""PDQ (``pdqhash``) as a descriptor and faiss's binary indexes behind the search layer, against pdqhash's own
output, real photographs and brute-force numpy Hamming distances."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pdqhash
import pytest
from PIL import Image

from copying_study.descriptors import descriptor_from_meta, load_descriptor
from copying_study.descriptors.pdq import (
    MATCH_THRESHOLD,
    bits_from_vectors,
    hamming_radius,
    similarity_from_hamming,
    vectors_from_bits,
)
from copying_study.search import BinarySearchIndex, build_index, knn, threshold_pairs
from copying_study.utils.images import to_rgb


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute force: all Hamming distances between two sets of packed hashes."""
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


def brute_knn(h: np.ndarray, k: int) -> np.ndarray:
    """Row ids ordered by (Hamming distance, id), the first ``k`` of each row."""
    ids = np.broadcast_to(np.arange(h.shape[1]), h.shape)
    return np.lexsort((ids, h), axis=1)[:, :k]


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as out:
        return out.convert("RGB")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photographs that ship with scikit-learn (china, flower: 640x427) and matplotlib (grace_hopper)."""
    import matplotlib.cbook as cbook
    from sklearn.datasets import load_sample_images

    images = [Image.fromarray(a) for a in load_sample_images().images]
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        images.append(Image.open(fh).convert("RGB"))
    return images


@pytest.fixture(scope="module")
def pdq():
    return load_descriptor({"name": "pdq"})


@pytest.fixture(scope="module")
def tied_hashes() -> np.ndarray:
    """400 hashes drawn from 12 originals with ~1 % of bits flipped: many exact duplicates and equal distances."""
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (12, 32), dtype=np.uint8)
    bits = pool[rng.integers(0, 12, 400)]
    flips = np.packbits(rng.random((400, 256)) < 0.01, axis=1)
    return bits ^ (flips * (rng.random((400, 1)) < 0.5)).astype(np.uint8)


# -- the hash --------------------------------------------------------------------------------------------


def test_hash_bits_equal_pdqhash_output(pdq, photos):
    grey = photos[2].convert("L")
    rgba = photos[0].convert("RGBA")
    images = [*photos, grey, rgba]
    hashes = pdq.hash(images)
    for k, img in enumerate(images):
        bits, quality = pdqhash.compute(np.asarray(to_rgb(img)))
        np.testing.assert_array_equal(hashes.bits[k], np.packbits(np.asarray(bits, dtype=np.uint8)))
        assert hashes.quality[k] == quality
    np.testing.assert_array_equal(pdq.encode_bits(images), hashes.bits)
    np.testing.assert_array_equal(pdq.encode(images), vectors_from_bits(hashes.bits))


def test_similarity_is_exactly_one_minus_twice_hamming(tied_hashes):
    x = vectors_from_bits(tied_hashes)
    assert x.dtype == np.float32 and x.shape == (400, 256)
    assert np.array_equal(np.linalg.norm(x, axis=1), np.ones(400, np.float32))
    h = hamming_matrix(tied_hashes, tied_hashes)
    assert np.array_equal(x @ x.T, (1 - 2 * h / 256).astype(np.float32))
    assert np.array_equal(similarity_from_hamming(h), x @ x.T)
    assert np.array_equal(bits_from_vectors(x), tied_hashes)  # exact both ways
    # the float (inner-product) search scores PDQ vectors exactly too, so every caller gets the same scale
    scores, idx = knn(x, x, k=5)
    assert np.array_equal(scores, similarity_from_hamming(np.take_along_axis(h, idx, axis=1)))


def test_match_rule_on_the_similarity_scale():
    assert MATCH_THRESHOLD == 0.7578125 == float(similarity_from_hamming(31))
    assert hamming_radius(MATCH_THRESHOLD) == 31 and hamming_radius(0.76) == 30 and hamming_radius(1.0) == 0
    assert similarity_from_hamming(32) < MATCH_THRESHOLD <= similarity_from_hamming(31)


def test_other_vectors_are_not_taken_for_hashes(tied_hashes):
    default = load_descriptor({"name": "default"}).encode([Image.new("RGB", (32, 32), "red")])
    assert default.shape[1] == 256  # the whitened default has PDQ's width but not its values
    with pytest.raises(ValueError, match="not PDQ hashes"):
        bits_from_vectors(default)
    raw = load_descriptor({"name": "default", "whitening": None}).encode([Image.new("RGB", (32, 32), "red")])
    with pytest.raises(ValueError, match=r"\[N, 256\]"):
        bits_from_vectors(raw)
    with pytest.raises(ValueError, match=r"uint8 \[N, 32\]"):
        vectors_from_bits(tied_hashes[:, :16])


def test_copies_of_real_photos_match_and_different_photos_do_not(pdq, photos):
    bits = np.unpackbits(pdq.encode_bits(photos), axis=1)
    assert (pdq.hash(photos).quality == 100).all()
    half = [p.resize((p.width // 2, p.height // 2), Image.Resampling.BILINEAR) for p in photos]
    for copies in ([jpeg(p, 50) for p in photos], half, [jpeg(p, 50) for p in half]):
        ham = (np.unpackbits(pdq.encode_bits(copies), axis=1) != bits).sum(axis=1)
        assert (ham <= 31).all(), ham  # measured: jpeg q50 0-2 bits, half size 6-12, both 8-12
    between = hamming_matrix(np.packbits(bits, axis=1), np.packbits(bits, axis=1))[np.triu_indices(3, 1)]
    assert (between >= 100).all(), between  # measured: 116-124 of 256 (random hashes: 128)
    x = pdq.encode([*photos, jpeg(photos[1], 50)])
    assert x[1] @ x[3] >= MATCH_THRESHOLD > max(x[0] @ x[1], x[0] @ x[2], x[1] @ x[2])


def test_low_quality_hashes_are_kept_and_marked(pdq, photos, caplog):
    flat = Image.new("RGB", (64, 64), (120, 130, 140))
    tiny = photos[0].resize((4, 4))  # under PDQ's 5-px minimum: the all-zero hash, quality 0
    with caplog.at_level(logging.WARNING, logger="copying_study.descriptors.pdq"):
        x, rows = pdq.encode_rows([photos[0], flat, tiny])
    assert x.shape == (3, 256) and list(rows["low_quality"]) == [False, True, True]
    assert rows["quality"][0] == 100 and rows["quality"][1] < 50 and rows["quality"][2] == 0
    assert not np.unpackbits(pdq.encode_bits([tiny])).any()
    assert "2 of 3 image(s) have quality < min_quality=50" in caplog.text
    assert list(load_descriptor({"name": "pdq", "min_quality": 0}).encode_rows([flat])[1]["low_quality"]) == [False]


# -- the descriptor interface ------------------------------------------------------------------------------


def test_descriptor_from_meta_round_trip(pdq, photos):
    meta = json.loads(json.dumps(pdq.meta()))
    assert meta["name"] == "pdq" and meta["dim"] == 256 and meta["metric"] == "hamming" and meta["weights"] is None
    assert meta["preprocessing"]["implementation"].startswith("pdqhash ")
    assert meta["match_rule"] == {"max_hamming": 31, "similarity_threshold": 0.7578125, "min_quality": 50}
    again = descriptor_from_meta(meta, {"batch_size": 2})
    assert again.meta() == meta and np.array_equal(again.encode(photos), pdq.encode(photos))
    with pytest.raises(ValueError, match="config"):
        descriptor_from_meta(meta, {"min_quality": 30})
    other_version = {**meta, "preprocessing": {**meta["preprocessing"], "implementation": "pdqhash 0.0.1"}}
    with pytest.raises(ValueError, match="preprocessing"):
        descriptor_from_meta(other_version)


def test_bad_pdq_specs_name_the_problem():
    with pytest.raises(ValueError, match="min_quality must be an integer in"):
        load_descriptor({"name": "pdq", "min_quality": 101})
    with pytest.raises(ValueError, match="allowed keys are name, path, batch_size, device, half, whitening, workers, min_quality"):
        load_descriptor({"name": "pdq", "size": 64})
    with pytest.raises(ValueError, match="pdq"):
        load_descriptor({"name": "phash"})


# -- binary search against brute force -------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 450])
def test_binary_knn_equals_brute_force_with_ties(tied_hashes, k):
    x = vectors_from_bits(tied_hashes)
    h = hamming_matrix(tied_hashes, tied_hashes)
    scores, idx = knn(x, x, k=k, metric="hamming", chunk_size=64)
    kk = min(k, 400)
    want = brute_knn(h, kk)
    assert np.array_equal(idx[:, :kk], want)
    assert np.array_equal(scores[:, :kk], similarity_from_hamming(np.take_along_axis(h, want, axis=1)))
    assert (idx[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()


def test_binary_nearest_other_breaks_ties_by_row(tied_hashes):
    x = vectors_from_bits(tied_hashes)
    h = hamming_matrix(tied_hashes, tied_hashes).astype(np.int64)
    np.fill_diagonal(h, 10**6)
    _, idx = knn(x, x, k=1, exclude_self=True, metric="hamming")
    assert np.array_equal(idx[:, 0], brute_knn(h, 1)[:, 0])


def test_tie_order_does_not_depend_on_faiss(tied_hashes):
    """Given an index that returns equal distances in DEScending id order, the result is still (distance, id)."""

    class ReversedTies:
        def __init__(self, bits):
            self.bits, self.ntotal = bits, len(bits)

        def search(self, q, k):
            h = hamming_matrix(q, self.bits)
            order = np.lexsort((-np.arange(self.ntotal)[None].repeat(len(q), 0), h), axis=1)[:, :k]
            return np.take_along_axis(h, order, axis=1).astype(np.int32), order.astype(np.int64)

    index = BinarySearchIndex(ReversedTies(tied_hashes), "flat", None, {}, exact_radius=256)
    for k in (1, 5):
        d, i = index.search_hamming(tied_hashes, k)
        want = brute_knn(hamming_matrix(tied_hashes, tied_hashes), k)
        assert np.array_equal(i, want)


@pytest.mark.parametrize("kind", ["flat", "hash"])
@pytest.mark.parametrize("threshold", [MATCH_THRESHOLD, 0.9])
def test_binary_threshold_pairs_equal_brute_force(tied_hashes, kind, threshold):
    x = vectors_from_bits(tied_hashes)
    meta = load_descriptor({"name": "pdq"}).meta()
    i, j, s = threshold_pairs(x, threshold, meta=meta, kind=kind, k_start=4, chunk_size=50)
    h = hamming_matrix(tied_hashes, tied_hashes)
    bi, bj = np.nonzero(np.triu(h <= hamming_radius(threshold), 1))
    assert np.array_equal(i, bi) and np.array_equal(j, bj) and len(i) > 400
    assert np.array_equal(s, similarity_from_hamming(h[bi, bj]))
    # the float path finds the same pairs with the same scores
    fi, fj, fs = threshold_pairs(x, threshold, k_start=4, chunk_size=50)
    assert np.array_equal(fi, i) and np.array_equal(fj, j) and np.array_equal(fs, s)


def test_hash_index_is_exact_to_its_radius_and_refuses_beyond(tied_hashes):
    rng = np.random.default_rng(1)
    # queries at exactly 0..31 flipped bits from a base hash: all must be found by the multi-index hash
    base = tied_hashes[:50]
    flips = np.zeros((50, 256), bool)
    for r in range(50):
        flips[r, rng.choice(256, size=r % 32, replace=False)] = True
    queries = base ^ np.packbits(flips, axis=1)
    index = build_index(vectors_from_bits(tied_hashes), "hash", metric="hamming")
    assert isinstance(index, BinarySearchIndex) and index.describe()["nflip"] == 1
    h = hamming_matrix(queries, tied_hashes)
    d, i = index.search_hamming(queries, 1)
    assert np.array_equal(d[:, 0], h.min(axis=1)) and (d[:, 0] <= 31).all()
    with pytest.raises(ValueError, match="only up to Hamming 31"):
        threshold_pairs(vectors_from_bits(tied_hashes), 0.7, index=index)


def test_approximate_binary_indexes_return_exact_scores(tied_hashes):
    x = vectors_from_bits(tied_hashes)
    h = hamming_matrix(tied_hashes, tied_hashes)
    full = build_index(x, "ivf", metric="hamming", nlist=8, nprobe=8)  # every list probed: exhaustive
    assert np.array_equal(full.search_hamming(tied_hashes, 5)[1], brute_knn(h, 5))
    for index in (build_index(x, "ivf", metric="hamming", nlist=8, nprobe=2),
                  build_index(x, "hnsw", metric="hamming")):
        d, i = index.search_hamming(tied_hashes, 5)
        ok = i >= 0
        assert np.array_equal(d[ok], np.take_along_axis(h, np.where(ok, i, 0), axis=1)[ok])
        assert (np.diff(d, axis=1) >= 0).all() and (i[:, 0] >= 0).all()


def test_dispatch_by_meta_and_clear_errors(tied_hashes, pdq):
    x = vectors_from_bits(tied_hashes)
    assert isinstance(build_index(x, meta=pdq.meta()), BinarySearchIndex)
    assert not isinstance(build_index(x), BinarySearchIndex)
    s_meta, i_meta = knn(x[:20], x, k=3, base_meta=pdq.meta())
    s_arg, i_arg = knn(x[:20], x, k=3, metric="hamming")
    assert np.array_equal(i_meta, i_arg) and np.array_equal(s_meta, s_arg)
    with pytest.raises(ValueError, match="for binary \\(Hamming\\) descriptors"):
        build_index(x, "hash")
    with pytest.raises(ValueError, match="unknown search metric 'l2'"):
        build_index(x, metric="l2")
    with pytest.raises(ValueError, match="not PDQ hashes"):
        knn(np.full((2, 256), 0.0625, np.float32) * 0.5, x, k=1, metric="hamming")
    default_meta = load_descriptor({"name": "default"}).meta()
    with pytest.raises(ValueError, match="descriptor mismatch"):
        knn(x[:2], build_index(x, meta=pdq.meta()), k=1, queries_meta=default_meta)


# -- the stages that use the search layer -----------------------------------------------------------------


def test_copy_guard_with_pdq(pdq, photos):
    from copying_study.diffusion.guard import CopyIndex

    train = photos[:2]
    index = CopyIndex(pdq, pdq.encode(train), ["china", "flower"], meta=pdq.meta())
    assert isinstance(index.index, BinarySearchIndex)
    scores, ids = index.top1([jpeg(photos[1], 60), photos[2]])
    assert ids[0] == "flower" and scores[0] >= MATCH_THRESHOLD > scores[1]


def test_evaluate_top_matches_scores_pdq_on_the_hamming_scale(pdq, photos):
    from copying_study.metrics.replication import top_matches

    gens = [jpeg(photos[0], 40), photos[2]]
    scores, ids = top_matches(pdq.encode(gens), pdq.encode(photos[:2]), ["china", "flower"], k=2)
    h = hamming_matrix(pdq.encode_bits(gens), pdq.encode_bits(photos[:2]))
    assert ids[0][0] == "china" and np.array_equal(np.sort(scores, axis=1), np.sort(similarity_from_hamming(h), 1))


def test_find_clusters_with_pdq_marks_quality(pdq, photos):
    from copying_study.data import dedup
    from copying_study.schemas import DedupParams

    images = [*photos, jpeg(photos[0], 50), Image.new("RGB", (64, 64), "grey"), Image.new("RGB", (80, 80), "grey")]
    x, rows = pdq.encode_rows(images)
    params = DedupParams.from_params({"descriptor": {"name": "pdq"}, "threshold": MATCH_THRESHOLD,
                                      "search": {"index": "hash"}, "min_cluster_size": 2}).as_dict()
    table = dedup.find_clusters(x, list("abcdef"), params, pdq.meta(), rows)
    assert list(table["cluster_size"]) == [2, 1, 1, 2, 2, 2]  # the copy joins its photo; the two flat images match
    assert list(table["descriptor_low_quality"]) == [False, False, False, False, True, True]
    assert table["descriptor_quality"].tolist()[:4] == [100, 100, 100, 100]
    with pytest.raises(ValueError, match="row_info 'descriptor_quality' has shape"):
        dedup.find_clusters(x, list("abcdef"), params, pdq.meta(), {"quality": rows["quality"][:3]})


@pytest.mark.slow
def test_dedup_clusters_with_pdq_on_the_embedded_study(kedro_project):
    """PDQ's own rule on the embedded 32-px scenes: every pair it reports is planted (precision 1.0 measured), but
    crops, jitter and JPEG on 32-px scenes move many copies beyond 31 bits (recall 0.34 measured at seed 0)."""
    import pandas as pd

    from tests.conftest import run_kedro

    def latest(relative: str):
        return sorted((kedro_project / relative).glob("*/*"))[-1]

    run_kedro(kedro_project, ["ingest", "dedup_clusters"],
              params={"ingest": {"embedded": {"n_images": 100, "n_clusters": 8}},  # the study's data until 2026-12-04
                      "dedup": {"descriptor": {"name": "pdq"}, "threshold": MATCH_THRESHOLD}})
    metrics = json.loads(latest("data/08_reporting/dedup_metrics.json").read_text())
    clusters = pd.read_parquet(latest("data/04_feature/duplicate_clusters.parquet"))
    training = pd.read_parquet(latest("data/03_primary/training_set.parquet"))
    with np.load(latest("data/04_feature/train_descriptors.npz")) as z:
        meta, quality = json.loads(str(z["meta"])), z["row_quality"]
    assert meta["name"] == "pdq" and meta["metric"] == "hamming" and quality.shape == (len(training),)
    assert np.array_equal(clusters["descriptor_quality"].to_numpy(), quality)
    assert metrics["low_quality_images"] == int((quality < 50).sum()) > 0
    assert metrics["pair_precision"] == 1.0
    assert 0.1 < metrics["pair_recall"] < 0.9  # far below the default descriptor's >= 0.9: PDQ misses most near copies
    # every byte-identical planted copy lands in its original's cluster (identical images hash identically)
    by_sha = training.assign(cluster_id=clusters["cluster_id"].to_numpy())
    planted = by_sha[by_sha["planted_cluster"] >= 0]
    exact = planted[planted.duplicated(["planted_cluster", "sha256"], keep=False)]
    assert len(exact) >= 2 * planted["planted_cluster"].nunique()
    assert (exact.groupby(["planted_cluster", "sha256"])["cluster_id"].nunique() == 1).all()
