"""Two-stage (seeds, then generations) bootstrap intervals and paired differences, on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from copying_study.metrics.intervals import (
    copy_rate,
    dataset_similarity,
    hierarchical_interval,
    paired_difference,
)


def test_a_constant_has_a_point_interval():
    out = hierarchical_interval({0: [1.0] * 20, 1: [1.0] * 7}, copy_rate, 0, "const", n_boot=200)
    assert out["estimate"] == 1.0 and out["ci"] == [1.0, 1.0] and out["n_seeds"] == 2 and out["n"] == 27


def test_one_seed_gives_the_binomial_interval():
    rng = np.random.default_rng(0)
    flags = (rng.random(2000) < 0.3).astype(float)
    out = hierarchical_interval({0: flags}, copy_rate, 1, "binomial", n_boot=2000)
    p = flags.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / flags.size)  # the normal approximation, ~0.020
    assert out["estimate"] == pytest.approx(p)
    assert out["ci"][0] == pytest.approx(p - half, abs=0.004) and out["ci"][1] == pytest.approx(p + half, abs=0.004)


def test_disagreeing_seeds_widen_the_interval_far_beyond_the_pooled_binomial():
    groups = {s: np.r_[np.ones(int(1000 * q)), np.zeros(1000 - int(1000 * q))] for s, q in enumerate((0.1, 0.5, 0.9))}
    out = hierarchical_interval(groups, copy_rate, 2, "seeds", n_boot=2000)
    assert out["estimate"] == pytest.approx(0.5)
    assert out["ci"][0] < 0.3 and out["ci"][1] > 0.7  # a pooled one-level bootstrap would give ~[0.48, 0.52]
    pooled = hierarchical_interval({0: np.concatenate(list(groups.values()))}, copy_rate, 2, "pooled", n_boot=2000)
    assert pooled["ci"][1] - pooled["ci"][0] < 0.05


def test_the_dataset_similarity_is_the_95th_percentile():
    values = np.linspace(0, 1, 101)
    out = hierarchical_interval({0: values, 1: values}, dataset_similarity, 0, "p95", n_boot=300)
    assert out["estimate"] == pytest.approx(0.95) and out["ci"][0] < 0.95 < out["ci"][1] + 1e-9


def test_paired_differences_find_a_shift_and_not_its_absence():
    rng = np.random.default_rng(3)
    base = {s: (rng.random(300) < q).astype(float) for s, q in enumerate((0.2, 0.4, 0.6))}
    shifted = {s: (rng.random(300) < q + 0.25).astype(float) for s, q in enumerate((0.2, 0.4, 0.6))}
    d = paired_difference(shifted, base, copy_rate, 0, "shift", n_boot=1000)
    assert d["estimate"] == pytest.approx(0.25, abs=0.05) and d["excludes_zero"] and d["ci"][0] > 0.1
    same = paired_difference(base, base, copy_rate, 0, "same", n_boot=500)
    assert same["estimate"] == 0.0 and not same["excludes_zero"]
    # pairing by seed: the seeds' large differences cancel, so the interval is far narrower than unpaired
    assert d["ci"][1] - d["ci"][0] < 0.2
    with pytest.raises(ValueError, match="no seed with values in both"):
        paired_difference({0: [1.0]}, {1: [0.0]}, copy_rate, 0, "none")


def test_seeded_and_named():
    g = {0: np.arange(50.0), 1: np.arange(30.0)}
    a = hierarchical_interval(g, dataset_similarity, 5, "x", n_boot=200)
    assert a == hierarchical_interval(g, dataset_similarity, 5, "x", n_boot=200)
    assert a["ci"] != hierarchical_interval(g, dataset_similarity, 5, "y", n_boot=200)["ci"]
    with pytest.raises(ValueError, match="no values for the interval 'z'"):
        hierarchical_interval({0: []}, copy_rate, 0, "z")
