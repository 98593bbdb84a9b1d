"""Correlations against scipy, the seeded bootstrap, and the degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from copying_study.metrics import correlation
from copying_study.metrics.correlation import bootstrap_correlation_ci, correlate, rowwise_pearson

X = np.array([5.1, 4.0, 3.3, 6.2, 2.8, 4.9, 5.5, 3.9, 4.4, 2.2, 6.8, 3.1])
Y = np.array([0.41, 0.55, 0.62, 0.30, 0.71, 0.38, 0.45, 0.58, 0.52, 0.66, 0.21, 0.69])


def test_point_estimates_and_p_values_match_scipy():
    out = correlate(X, Y, x_name="entropy", y_name="sim", n_boot=200, seed=1)
    pr, sr = stats.pearsonr(X, Y), stats.spearmanr(X, Y)
    assert out["status"] == "ok" and out["reason"] is None and out["n"] == 12
    assert out["pearson_r"] == pytest.approx(pr.statistic, abs=1e-12)
    assert out["pearson_p"] == pytest.approx(pr.pvalue, rel=1e-9)
    assert out["spearman_r"] == pytest.approx(sr.statistic, abs=1e-12)
    assert out["spearman_p"] == pytest.approx(sr.pvalue, rel=1e-9)
    assert out["pearson_r"] < -0.9  # the fixed data are strongly anti-correlated


def test_hand_computed_pearson():
    # x = 1..5, y = 2,4,5,4,5: sxy = 6, sxx = 10, syy = 6 -> r = 6 / sqrt(60)
    out = correlate([1, 2, 3, 4, 5], [2, 4, 5, 4, 5], n_boot=100)
    assert out["pearson_r"] == pytest.approx(6 / np.sqrt(60), abs=1e-12)


def test_rowwise_pearson_matches_scipy_and_marks_constant_rows():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    a[2] = 1.5  # a constant row
    r = rowwise_pearson(a, b)
    for i in (0, 1, 3, 4):
        assert r[i] == pytest.approx(stats.pearsonr(a[i], b[i]).statistic, abs=1e-12)
    assert np.isnan(r[2]) and np.isnan(r).sum() == 1


def test_bootstrap_equals_a_direct_computation_of_the_same_resamples():
    n_boot, seed = 300, 11
    out = bootstrap_correlation_ci(X, Y, n_boot=n_boot, confidence=0.9, seed=seed)
    idx = np.random.default_rng(seed).integers(0, len(X), size=(n_boot, len(X)))
    pear = np.array([stats.pearsonr(X[i], Y[i]).statistic for i in idx])
    spear = np.array([stats.spearmanr(X[i], Y[i]).statistic for i in idx])
    assert out["n_valid"] == n_boot
    assert out["pearson_ci"] == pytest.approx(np.quantile(pear, [0.05, 0.95]).tolist(), abs=1e-12)
    assert out["spearman_ci"] == pytest.approx(np.quantile(spear, [0.05, 0.95]).tolist(), abs=1e-12)


def test_bootstrap_is_seed_stable_and_seed_dependent():
    a = correlate(X, Y, n_boot=500, seed=7)
    b = correlate(X, Y, n_boot=500, seed=7)
    c = correlate(X, Y, n_boot=500, seed=8)
    assert a["pearson_ci"] == b["pearson_ci"] and a["spearman_ci"] == b["spearman_ci"]
    assert a["pearson_ci"] != c["pearson_ci"]
    low, high = a["pearson_ci"]
    assert low < a["pearson_r"] < high <= 1.0


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    whole = bootstrap_correlation_ci(X, Y, n_boot=250, confidence=0.95, seed=5)
    monkeypatch.setattr(correlation, "_MAX_RESAMPLED_VALUES", 7 * len(X))  # 7 resamples per chunk
    chunked = bootstrap_correlation_ci(X, Y, n_boot=250, confidence=0.95, seed=5)
    assert chunked == whole


def test_fewer_than_three_rows_is_not_computable():
    out = correlate([1.0, 2.0], [0.3, 0.4], x_name="entropy")
    assert out["status"] == "not_computable" and "at least 3" in out["reason"]
    assert out["pearson_r"] is None and out["spearman_p"] is None and out["pearson_ci"] is None
    assert correlate([], [], x_name="entropy")["n"] == 0


def test_constant_column_is_not_computable_and_named():
    out = correlate([2.0, 2.0, 2.0, 2.0], [0.1, 0.5, 0.2, 0.9], x_name="jpeg_bytes", y_name="sim")
    assert out["status"] == "not_computable" and "'jpeg_bytes' is constant" in out["reason"]
    out = correlate([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], x_name="entropy", y_name="top1_similarity")
    assert "'top1_similarity' is constant" in out["reason"]


def test_nan_is_an_error_naming_the_positions():
    with pytest.raises(ValueError, match=r"'top1_similarity' has 2 non-finite value\(s\) at positions \[1, 3\]"):
        correlate([1, 2, 3, 4], [0.1, np.nan, 0.3, np.inf], y_name="top1_similarity")
    with pytest.raises(ValueError, match="different lengths"):
        correlate([1, 2, 3], [1, 2])


def test_too_few_distinct_resamples_gives_no_interval_with_a_reason():
    # n = 3: only resamples holding both row 0 and row 2 have two non-constant columns (12 of 27 = 44 %)
    out = correlate([0.0, 0.0, 1.0], [1.0, 0.0, 0.0], n_boot=1000, seed=0)
    assert out["status"] == "ok" and out["pearson_r"] == pytest.approx(-0.5)
    assert out["pearson_ci"] is None and out["spearman_ci"] is None
    assert "bootstrap resamples" in out["bootstrap"]["ci_reason"]
    assert 380 < out["bootstrap"]["n_valid"] < 510


def test_bootstrap_argument_checks():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_correlation_ci(X, Y, n_boot=0, confidence=0.95, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_correlation_ci(X, Y, n_boot=10, confidence=1.0, seed=0)


def test_resample_ranks_equal_scipy_rankdata_with_ties():
    values = np.array([3.0, 1.0, 3.0, 2.0, 5.0, 1.0, 3.0])
    levels, codes = np.unique(values, return_inverse=True)
    idx = np.random.default_rng(2).integers(0, len(values), size=(50, len(values)))
    expected = stats.rankdata(values[idx], axis=1)
    assert np.array_equal(correlation.resample_ranks(codes, len(levels), idx), expected)


def test_scipy_bootstrap_agrees_with_the_hand_written_one_it_replaced_within_monte_carlo_error():
    # The hand-written paired bootstrap (before scipy.stats.bootstrap replaced it), seed 2, 20000 resamples, gave
    # Pearson [0.18179, 0.59426] and Spearman [0.13195, 0.59147] on this data; scipy's endpoints vary by sd <= 0.002
    # over 10 seeds, so another seed must land within 5 sd (0.010).
    rng = np.random.default_rng(1)
    a = rng.normal(size=60)
    b = 0.5 * a + rng.normal(size=60)
    out = bootstrap_correlation_ci(a, b, n_boot=20000, confidence=0.95, seed=12)
    assert out["pearson_ci"] == pytest.approx([0.18179, 0.59426], abs=0.010)
    assert out["spearman_ci"] == pytest.approx([0.13195, 0.59147], abs=0.010)
    assert out["n_valid"] == 20000
