"""The study's cell intervals, comparisons and verdicts on generations with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from copying_study.schemas import StudyParams
from copying_study.study.findings import (
    GENERATION_COLUMNS,
    cell_intervals,
    comparisons_table,
    generation_values,
    study_tables,
    verdict,
)


def gens_of(cell: str, seed: int, copies: int, n: int, dup: int = 0, top1: float = 0.3) -> pd.DataFrame:
    """``n`` generations of which the first ``copies`` are copies (top-1 0.9) and the first ``dup`` come from
    duplicated images' prompts."""
    scores = pd.DataFrame({
        "gen_id": [f"{cell}-{seed}-{i:03d}" for i in range(n)],
        "source_image_id": [f"img{i}" for i in range(n)],
        "top1_similarity": [0.9 if i < copies else top1 for i in range(n)],
        "copy": [i < copies for i in range(n)],
        "source_duplicated": [i < dup for i in range(n)],
    })
    return generation_values({"name": cell, "seed": seed, "namespace": f"{cell}__s{seed}"}, scores)


def test_generation_values_columns_and_flags():
    g = gens_of("a", 1, copies=3, n=10, dup=4)
    assert list(g.columns) == list(GENERATION_COLUMNS)
    assert g["copy"].sum() == 3 and g["source_duplicated"].sum() == 4 and (g["seed"] == 1).all()
    with pytest.raises(ValueError, match="lacks the column"):
        generation_values({"name": "a", "seed": 0, "namespace": "a__s0"}, pd.DataFrame({"gen_id": ["x"]}))


def test_cell_intervals_pool_seeds_and_split_by_duplication():
    gens = pd.concat([gens_of("a", s, copies=c, n=100, dup=20) for s, c in ((0, 20), (1, 20), (2, 20))])
    out = cell_intervals(gens, n_boot=300, confidence=0.95, seed=0).set_index("cell")
    assert out.loc["a", "copy_rate"] == pytest.approx(0.2)
    # every duplicated prompt's generation is a copy, no other one is: the split has no variance at all
    assert out.loc["a", "copy_rate_duplicated"] == 1.0
    assert out.loc["a", "copy_rate_duplicated_ci_low"] == 1.0 == out.loc["a", "copy_rate_duplicated_ci_high"]
    assert out.loc["a", "copy_rate_not_duplicated"] == 0.0
    assert out.loc["a", "copy_rate_ci_low"] < 0.2 < out.loc["a", "copy_rate_ci_high"]
    assert out.loc["a", "copy_rate_duplicated_n"] == 60 and out.loc["a", "n_seeds"] == 3
    assert out.loc["a", "dataset_similarity"] == pytest.approx(0.9)


def test_comparisons_find_a_clear_difference_and_not_a_null_one():
    rows = []
    for s in (0, 1, 2):
        rows += [gens_of("full", s, copies=40, n=100), gens_of("nodup", s, copies=2, n=100),
                 gens_of("same", s, copies=3, n=100, top1=0.31)]
    gens = pd.concat(rows)
    comps = [{"finding": "a", "a": "full", "b": "nodup", "expect": "greater", "statistics": ["copy_rate"]},
             {"finding": "b", "a": "full", "b": "nodup", "expect": "less", "statistics": ["copy_rate"]},
             {"finding": "c", "a": "same", "b": "nodup", "expect": "greater", "statistics": ["copy_rate"]},
             {"finding": "d", "a": "full", "b": "nodup", "expect": "greater",
              "statistics": ["copy_rate_duplicated"]}]
    out = comparisons_table(gens, comps, n_boot=500, confidence=0.95, seed=0)
    assert out.loc[0, "difference"] == pytest.approx(0.38) and out.loc[0, "verdict"] == "reproduced"
    assert out.loc[0, "ci_low"] > 0.25 and out.loc[0, "n_seeds"] == 3
    assert out.loc[1, "verdict"] == "opposite"
    assert out.loc[2, "verdict"] == "not resolved"  # 0.03 vs 0.02 on 300 generations a side
    assert out.loc[3, "verdict"] == "not resolved" and "no seed" in out.loc[3, "note"]


@pytest.mark.parametrize(("low", "high", "expect", "want"), [
    (0.1, 0.2, "greater", "reproduced"), (-0.2, -0.1, "less", "reproduced"), (0.1, 0.2, "less", "opposite"),
    (-0.1, 0.2, "greater", "not resolved"), (0.0, 0.2, "greater", "not resolved")])
def test_verdict(low, high, expect, want):
    assert verdict(low, high, expect) == want


def test_study_tables_add_seed_rates_cell_intervals_and_comparisons():
    gens = pd.concat([gens_of("full", s, copies=10 + s, n=50, dup=10) for s in (0, 1)]
                     + [gens_of("nodup", s, copies=0, n=50) for s in (0, 1)])
    results = pd.DataFrame({"cell": ["full", "full", "nodup", "nodup"], "seed": [0, 1, 0, 1],
                            "namespace": ["full__s0", "full__s1", "nodup__s0", "nodup__s1"]})
    grid = StudyParams.from_params({"seeds": [0, 1], "train_cells": {"full": None, "nodup": None},
                                    "comparisons": [{"finding": "a", "a": "full", "b": "nodup",
                                                     "expect": "greater"}],
                                    "intervals": {"n_boot": 200}})
    out, comps, g = study_tables(results, gens, grid)
    row = out.set_index("namespace").loc["full__s1"]
    assert row["copy_rate"] == pytest.approx(11 / 50) and row["copy_rate_duplicated"] == 1.0
    assert row["copy_rate_not_duplicated"] == pytest.approx(1 / 40)
    assert row["cell_copy_rate"] == pytest.approx(21 / 100)
    assert set(comps["statistic"]) == {"copy_rate", "dataset_similarity"} and len(g) == 200
    again = study_tables(results, gens.sample(frac=1.0, random_state=3), grid)
    pd.testing.assert_frame_equal(out, again[0])  # order of the generations does not matter
    assert np.isfinite(comps["ci_low"]).all()
