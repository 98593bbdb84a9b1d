"""Replication statistics against hand-computed values on small fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from copying_study.metrics import replication as rep


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_statistics_on_an_even_grid():
    x = np.linspace(0.0, 1.0, 21)  # 0, 0.05, ..., 1.0
    s = rep.similarity_statistics(x)
    assert s["dataset_similarity"] == pytest.approx(0.95)
    assert s["median"] == pytest.approx(0.5)
    assert s["p75"] == pytest.approx(0.75)
    assert s["p90"] == pytest.approx(0.9)
    assert s["mean"] == pytest.approx(0.5)
    assert s["n"] == 21
    # strictly greater than 0.5: 0.55 ... 1.0 are 10 of 21 values; 0.5 itself does not count
    assert s["fraction_above_0_5"] == pytest.approx(10 / 21)


def test_95th_percentile_interpolates_linearly():
    # position 0.95 * (5 - 1) = 3.8 between 0.8 and 0.9: 0.8 + 0.8 * 0.1 = 0.88
    s = rep.similarity_statistics([0.9, 0.1, 0.4, 0.8, 0.2], thresholds=(0.5, 0.85))
    assert s["dataset_similarity"] == pytest.approx(0.88)
    assert s["fraction_above_0_5"] == pytest.approx(2 / 5)
    assert s["fraction_above_0_85"] == pytest.approx(1 / 5)


def test_threshold_keys():
    assert rep.threshold_key(0.5) == "fraction_above_0_5"
    assert rep.threshold_key(0.75) == "fraction_above_0_75"
    assert rep.threshold_key(1) == "fraction_above_1"


def test_statistics_refuse_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        rep.similarity_statistics([])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        rep.similarity_statistics([0.2, float("nan"), 0.3])


def test_bootstrap_interval_is_seed_stable_and_seed_dependent():
    x = np.random.default_rng(3).uniform(0, 1, 200)
    a = rep.bootstrap_percentile_interval(x, seed=7, name="generations", n_boot=300)
    b = rep.bootstrap_percentile_interval(x, seed=7, name="generations", n_boot=300)
    c = rep.bootstrap_percentile_interval(x, seed=8, name="generations", n_boot=300)
    d = rep.bootstrap_percentile_interval(x, seed=7, name="background", n_boot=300)
    assert a == b
    assert a != c and a != d
    p95 = np.percentile(x, 95)
    assert a[0] <= p95 <= a[1]
    assert a[1] - a[0] < 0.1


def test_bootstrap_interval_hand_computed_on_two_values():
    # resamples of [0, 1]: (0,0) -> p95 0 (prob 1/4), mixed -> 0.95 (1/2), (1,1) -> 1 (1/4);
    # the 2.5th and 97.5th percentiles of that distribution are 0 and 1
    lo, hi = rep.bootstrap_percentile_interval([0.0, 1.0], seed=0, name="x", n_boot=4000)
    assert (lo, hi) == (0.0, 1.0)
    # a constant sample has a zero-width interval; one value too
    assert rep.bootstrap_percentile_interval([0.3] * 9, seed=0, name="x", n_boot=50) == pytest.approx((0.3, 0.3))
    assert rep.bootstrap_percentile_interval([0.7], seed=0, name="x", n_boot=50) == pytest.approx((0.7, 0.7))


def test_bootstrap_blocks_give_the_same_interval(monkeypatch):
    x = np.random.default_rng(0).uniform(0, 1, 50)
    full = rep.bootstrap_percentile_interval(x, seed=1, name="g", n_boot=100)
    monkeypatch.setattr(rep, "_BOOT_BLOCK_ELEMENTS", 50 * 7)  # 7 resamples per block
    assert rep.bootstrap_percentile_interval(x, seed=1, name="g", n_boot=100) == full


def test_bootstrap_parameter_errors():
    with pytest.raises(ValueError, match="n_boot"):
        rep.bootstrap_percentile_interval([0.1, 0.2], seed=0, name="x", n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        rep.bootstrap_percentile_interval([0.1, 0.2], seed=0, name="x", confidence=1.5)


def test_background_excludes_self_by_index_and_keeps_exact_duplicates():
    base = unit([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0.8, 0.6, 0], [0, 0, 0, 1]])
    scores, idx = rep.nearest_other(base)
    # rows 0-2 are exact copies of each other: nearest other is a copy at 1.0, never the row itself
    for r in range(3):
        assert idx[r] != r and idx[r] in (0, 1, 2)
        assert scores[r] == pytest.approx(1.0)
    assert idx[3] == 4 and scores[3] == pytest.approx(0.8)
    assert idx[4] == 3 and scores[4] == pytest.approx(0.8)
    # row 5 is orthogonal to everything: its nearest other scores 0, not its own 1.0
    assert idx[5] != 5 and scores[5] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        rep.nearest_other(base[:1])


def test_top_matches_find_copies_and_rank_by_score():
    rng = np.random.default_rng(0)
    train = unit(rng.normal(size=(50, 16)))
    ids = [f"t{i}" for i in range(50)]
    exact = train[7]
    near = unit(train[23] + 0.05 * rng.normal(size=16))
    unrelated = unit(rng.normal(size=16))
    scores, top = rep.top_matches(np.stack([exact, near, unrelated]).astype(np.float32), train, ids, k=10)
    assert scores.shape == (3, 10) and all(len(t) == 10 for t in top)
    assert top[0][0] == "t7" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert top[1][0] == "t23" and scores[1, 0] > 0.95
    assert scores[2, 0] < scores[1, 0] - 0.2
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # sorted, best first
    # k larger than the base keeps every base row
    s, t = rep.top_matches(train[:2], train[:3], ids[:3], k=10)
    assert s.shape == (2, 3)


def test_descriptor_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dimensions differ"):
        rep.top_matches(np.ones((2, 8), np.float32), np.ones((3, 16), np.float32), ["a", "b", "c"], k=2)
    with pytest.raises(ValueError, match="NaN"):
        rep.top_matches(np.full((2, 8), np.nan, np.float32), np.ones((3, 8), np.float32), ["a", "b", "c"], k=2)
    with pytest.raises(ValueError, match="ids"):
        rep.top_matches(np.ones((2, 8), np.float32), np.ones((3, 8), np.float32), ["a"], k=2)


def test_per_prompt_max_and_top3_mean():
    prompts = ["a", "a", "b", "a", "a"]
    table = rep.per_prompt_scores(prompts, [0.1, 0.5, 0.2, 0.3, 0.9])
    a = table.set_index("prompt").loc["a"]
    b = table.set_index("prompt").loc["b"]
    assert a["n_images"] == 4 and a["max_similarity"] == pytest.approx(0.9)
    assert a["top3_mean"] == pytest.approx((0.9 + 0.5 + 0.3) / 3)
    assert b["max_similarity"] == pytest.approx(0.2) and b["top3_mean"] == pytest.approx(0.2)
    summary = rep.per_prompt_summary(table)
    assert summary["n_prompts"] == 2
    assert summary["max"]["mean"] == pytest.approx((0.9 + 0.2) / 2)
    assert summary["prompts_max_fraction_above_0_5"] == pytest.approx(0.5)


def test_duplicated_split():
    top1 = [0.9, 0.8, 0.2, 0.3, 0.5]
    flags = [True, True, False, False, None]
    out = rep.duplicated_split(top1, flags)
    assert out["duplicated"]["n"] == 2 and out["duplicated"]["mean"] == pytest.approx(0.85)
    assert out["not_duplicated"]["n"] == 2 and out["not_duplicated"]["mean"] == pytest.approx(0.25)
    assert out["n_without_source"] == 1
    assert out["difference_mean"] == pytest.approx(0.6)
    assert "skipped" in rep.duplicated_split([0.1, 0.2], [None, None])


def test_planted_cluster_split():
    out = rep.planted_cluster_split([0.9, 0.7, 0.1, 0.2, 0.4], [3, 3, -1, -1, None])
    assert out["planted"]["n"] == 2 and out["planted"]["mean"] == pytest.approx(0.8)
    assert out["not_planted"]["mean"] == pytest.approx(0.15)
    assert out["per_cluster"] == {"3": {"n": 2, "mean": pytest.approx(0.8), "max": pytest.approx(0.9)}}
    assert out["n_unknown"] == 1


def test_scipy_bootstrap_agrees_with_the_hand_written_one_it_replaced_within_monte_carlo_error():
    # The hand-written percentile bootstrap (before scipy.stats.bootstrap replaced it) gave, on this data with
    # seed 3 and 20000 resamples, (0.51279, 0.60266). Over 10 seeds scipy's endpoints vary by sd 0.0020 / 0.0003,
    # so another seed must land within 5 sd (0.010) of the old interval.
    x = np.random.default_rng(0).beta(2, 5, size=200)
    lo, hi = rep.bootstrap_percentile_interval(x, seed=11, name="g", n_boot=20000)
    assert lo == pytest.approx(0.51279, abs=0.010) and hi == pytest.approx(0.60266, abs=0.010)
