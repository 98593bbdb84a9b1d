"""The study's statistics with intervals over generations and seeds, and the paper's comparisons between cells.

Every cell and seed contributes its generations (``study_generations``: one row per generation with its top-1
similarity, its calibrated copy flag and whether its prompt came from a duplicated image). From them:

- :func:`cell_intervals`: per cell, each statistic of :data:`STATISTICS` over all its seeds' generations, with the
  two-stage (seeds, then generations) bootstrap interval of :mod:`copying_study.metrics.intervals`;
- :func:`comparisons_table`: each comparison of ``study.comparisons`` (cell ``a`` minus cell ``b``, the direction
  the paper states) as a difference paired by seed with its interval, and a verdict: ``reproduced`` when the interval
  excludes 0 on the paper's side, ``opposite`` when it excludes 0 on the other side, ``not resolved`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from copying_study.metrics import intervals

GENERATION_COLUMNS: tuple[str, ...] = ("cell", "seed", "namespace", "gen_id", "source_image_id", "top1_similarity",
                                       "copy", "source_duplicated")
"""Columns of ``study_generations`` (one row per generation of every cell and seed)."""

#: statistic name -> (column, which generations (None: all; True/False: prompts of duplicated / other images), fn)
STATISTICS: dict[str, tuple[str, bool | None, Callable[[np.ndarray], float]]] = {
    "copy_rate": ("copy", None, intervals.copy_rate),
    "copy_rate_duplicated": ("copy", True, intervals.copy_rate),
    "copy_rate_not_duplicated": ("copy", False, intervals.copy_rate),
    "dataset_similarity": ("top1_similarity", None, intervals.dataset_similarity),
}

VERDICTS = ("reproduced", "opposite", "not resolved")


def generation_values(cell: Mapping[str, Any], scores: pd.DataFrame) -> pd.DataFrame:
    """One cell's rows of ``study_generations`` from its ``replication_scores`` (which carry the calibrated ``copy``
    flag and ``source_duplicated``)."""
    missing = sorted({"gen_id", "top1_similarity", "copy"} - set(scores.columns))
    if missing:
        raise ValueError(f"replication_scores of study cell {cell['namespace']} lacks the column(s) {missing}")
    out = pd.DataFrame({
        "cell": str(cell["name"]), "seed": int(cell["seed"]), "namespace": str(cell["namespace"]),
        "gen_id": scores["gen_id"].astype(str).to_numpy(),
        "source_image_id": (scores["source_image_id"].astype(object).to_numpy() if "source_image_id" in scores
                            else None),
        "top1_similarity": scores["top1_similarity"].astype(float).to_numpy(),
        "copy": scores["copy"].astype(bool).to_numpy(),
        "source_duplicated": (scores["source_duplicated"].astype(object).to_numpy() if "source_duplicated" in scores
                              else None),
    }, index=range(len(scores)))
    return out[list(GENERATION_COLUMNS)]


def _values(gens: pd.DataFrame, cell: str, statistic: str) -> dict[int, np.ndarray]:
    column, group, _ = STATISTICS[statistic]
    rows = gens[gens["cell"] == cell]
    if group is not None:
        rows = rows[rows["source_duplicated"].map(lambda v: v is not None and v == v and bool(v) == group)]
    return {int(s): g[column].astype(float).to_numpy() for s, g in rows.groupby("seed", sort=True)}


def cell_intervals(gens: pd.DataFrame, n_boot: int, confidence: float, seed: int,
                   statistics: Sequence[str] = tuple(STATISTICS)) -> pd.DataFrame:
    """Per cell: ``<statistic>``, ``<statistic>_ci_low``, ``<statistic>_ci_high`` and ``<statistic>_n`` (the
    generations it rests on) for each statistic, pooled over seeds; NaN where a cell has no such generations."""
    rows = []
    for cell in sorted(gens["cell"].unique()):
        row: dict[str, Any] = {"cell": cell, "n_seeds": int(gens.loc[gens["cell"] == cell, "seed"].nunique())}
        for name in statistics:
            values = _values(gens, cell, name)
            if not any(len(v) for v in values.values()):
                row.update({name: np.nan, f"{name}_ci_low": np.nan, f"{name}_ci_high": np.nan, f"{name}_n": 0})
                continue
            out = intervals.hierarchical_interval(values, STATISTICS[name][2], seed, f"{cell}/{name}",
                                                  n_boot=n_boot, confidence=confidence)
            row.update({name: out["estimate"], f"{name}_ci_low": out["ci"][0], f"{name}_ci_high": out["ci"][1],
                        f"{name}_n": out["n"]})
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(low: float, high: float, expect: str) -> str:
    """``reproduced`` / ``opposite`` / ``not resolved`` for a difference interval and the paper's direction."""
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    above, below = low > 0, high < 0
    if (above and expect == "greater") or (below and expect == "less"):
        return "reproduced"
    if above or below:
        return "opposite"
    return "not resolved"


COMPARISON_COLUMNS: tuple[str, ...] = ("finding", "a", "b", "expect", "statistic", "a_value", "b_value",
                                       "difference", "ci_low", "ci_high", "n_seeds", "verdict", "note")


def comparisons_table(gens: pd.DataFrame, comparisons: Sequence[Mapping[str, Any]], n_boot: int,
                      confidence: float, seed: int) -> pd.DataFrame:
    """``study_comparisons``: one row per comparison and statistic (see the module docstring)."""
    rows = []
    for comp in comparisons:
        for name in comp["statistics"]:
            fn = STATISTICS[name][2]
            a, b = _values(gens, comp["a"], name), _values(gens, comp["b"], name)
            base = {"finding": comp["finding"], "a": comp["a"], "b": comp["b"], "expect": comp["expect"],
                    "statistic": name}
            shared = [s for s in a if s in b and len(a[s]) and len(b[s])]
            if not shared:
                rows.append({**base, "a_value": np.nan, "b_value": np.nan, "difference": np.nan, "ci_low": np.nan,
                             "ci_high": np.nan, "n_seeds": 0, "verdict": "not resolved",
                             "note": f"no seed has {name} values in both cells"})
                continue
            out = intervals.paired_difference(a, b, fn, seed, f"{comp['a']}-{comp['b']}/{name}", n_boot=n_boot,
                                              confidence=confidence)
            low, high = out["ci"]
            rows.append({**base, "a_value": fn(np.concatenate([a[s] for s in shared])),
                         "b_value": fn(np.concatenate([b[s] for s in shared])), "difference": out["estimate"],
                         "ci_low": low, "ci_high": high, "n_seeds": out["n_seeds"],
                         "verdict": verdict(low, high, comp["expect"]), "note": ""})
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def study_tables(results: pd.DataFrame, gens: pd.DataFrame, grid: Any
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``study_results`` with each (cell, seed)'s copy rates and each cell's intervals (columns ``cell_<statistic>``,
    ``cell_<statistic>_ci_low`` / ``_ci_high`` / ``_n``), ``study_comparisons`` and ``study_generations``, from the
    results rows, the generations of every cell and the validated grid (``StudyParams``)."""
    gens = gens.sort_values(["cell", "seed", "gen_id"], kind="stable").reset_index(drop=True)
    seed = 0  # the intervals' draws are named by cell and statistic (numpy_rng(0, "intervals", name))
    per_seed = []
    for (cell, s), g in gens.groupby(["cell", "seed"], sort=True):
        dup = g["source_duplicated"].map(lambda v: v is not None and v == v and bool(v))
        known = g["source_duplicated"].map(lambda v: v is not None and v == v)
        per_seed.append({"cell": cell, "seed": int(s), "copy_rate": float(g["copy"].mean()),
                         "copy_rate_duplicated": float(g.loc[dup, "copy"].mean()) if dup.any() else np.nan,
                         "copy_rate_not_duplicated": (float(g.loc[known & ~dup, "copy"].mean())
                                                      if (known & ~dup).any() else np.nan),
                         "n_duplicated_generations": int(dup.sum())})
    out = results.drop(columns=[c for c in ("copy_rate", "copy_rate_duplicated", "copy_rate_not_duplicated",
                                            "n_duplicated_generations") if c in results.columns])
    out = out.merge(pd.DataFrame(per_seed), on=["cell", "seed"], how="left")
    cells = cell_intervals(gens, grid.intervals.n_boot, grid.intervals.confidence, seed)
    cells = cells.rename(columns={c: f"cell_{c}" for c in cells.columns if c != "cell"})
    out = out.merge(cells, on="cell", how="left")
    comparisons = comparisons_table(gens, [c.model_dump() for c in grid.comparisons], grid.intervals.n_boot,
                                    grid.intervals.confidence, seed)
    return out, comparisons, gens
