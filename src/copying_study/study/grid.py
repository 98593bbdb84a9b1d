"""The paper's experiment grid without Kedro: grid expansion, parameter merging and the results table.

A grid (``params:study``) names *train cells* (overrides of the stage parameters: a model is finetuned per cell and
seed) and *inference cells* (a train cell's model sampled differently), each run once per seed::

    study:
      seeds: [0, 1]
      shared: {finetune: {steps: 300}}                  # applied to every cell
      train_cells:
        full_ddf5: {finetune: {duplication: full, ddf: 5}}
      inference_cells:
        full_ddf5_rt: {from: full_ddf5, generate: {mitigation: rt}}

:func:`expand_grid` gives one :class:`Cell` (a Kedro namespace such as ``full_ddf5__s0``) per cell and seed;
:func:`cell_parameters` merges base stage parameters <- ``shared`` <- the cell's overrides. :func:`results_row` turns
one cell's outputs into a row of ``study_results``. The HTML page is :mod:`copying_study.study.report`'s.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from copying_study.schemas import STAGE_SCHEMAS
from copying_study.schemas.study import SEED_SEPARATOR, STAGES, StudyParams

RESULT_COLUMNS: tuple[str, ...] = (
    "cell", "seed", "namespace", "kind", "from_cell", "duplication", "ddf", "caption_type", "train_mitigation",
    "inference_mitigation", "finetune_steps", "n_generations", "dataset_similarity", "dataset_similarity_ci_low",
    "dataset_similarity_ci_high", "fraction_above_0_5", "mean_similarity", "quality", "quality_name", "fid",
    "frechet_distance", "clipscore", "clipscore_reason", "background_dataset_similarity",
    "duplicated_dataset_similarity", "not_duplicated_dataset_similarity", "duplicated_mean_similarity",
    "not_duplicated_mean_similarity", "n_duplicated_prompts", "entropy_pearson_r",
    "entropy_pearson_ci_low", "entropy_pearson_ci_high", "entropy_pearson_p", "jpeg_pearson_r", "descriptor",
)
"""Columns of ``study_results`` (one row per cell and seed)."""


@dataclass(frozen=True)
class Cell:
    """One (cell, seed) of the grid: a Kedro namespace."""

    name: str
    seed: int
    kind: str  # "train" | "inference"
    overrides: dict[str, Any]
    source: str | None = None  # inference cells: the train cell whose model they sample

    @property
    def namespace(self) -> str:
        return namespace(self.name, self.seed)

    @property
    def source_namespace(self) -> str | None:
        return namespace(self.source, self.seed) if self.source else None


def namespace(cell: str, seed: int) -> str:
    """The Kedro namespace of ``cell`` at ``seed``: ``<cell>__s<seed>``."""
    return f"{cell}{SEED_SEPARATOR}{int(seed)}"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in recursively (dicts merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_grid(study_params: Any) -> list[Cell]:
    """One :class:`Cell` per (cell, seed): train cells first, then inference cells, each in seed order. The grid is
    checked by :class:`~copying_study.schemas.StudyParams`."""
    study = StudyParams.from_params(study_params)
    cells = [Cell(name, seed, "train", study.train_overrides(name)) for name in study.train_cells
             for seed in study.seeds]
    for name, spec in study.inference_cells.items():
        cells += [Cell(name, seed, "inference", spec.overrides(), source=spec.source) for seed in study.seeds]
    return cells


def cell_parameters(all_params: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
    """The parameters of one cell: base stage parameters ← ``study.shared`` ← (the train cell's) ← the cell's, each
    stage's block checked by its schema (:data:`copying_study.schemas.STAGE_SCHEMAS`, defaults filled in).

    Returns ``{"finetune": ..., "generate": ..., "evaluate": ..., "complexity": ..., "seed": s, "cell": {...}}``.
    """
    study = StudyParams.from_params(all_params.get("study"))
    missing = [s for s in STAGES if not isinstance(all_params.get(s), Mapping)]
    if missing:
        raise ValueError(f"the study needs the stage parameters {missing} (conf/base/parameters_<stage>.yml)")
    layers = [study.shared.overrides()]
    if cell.kind == "inference":
        layers.append(study.train_overrides(cell.source))
    layers.append(cell.overrides)
    out: dict[str, Any] = {}
    for stage in STAGES:
        params = dict(all_params[stage])
        for layer in layers:
            params = deep_merge(params, layer.get(stage) or {})
        out[stage] = STAGE_SCHEMAS[stage].from_params(params, where=f"study cell {cell.namespace}: {stage}").as_dict()
    out["seed"] = int(cell.seed)
    out["cell"] = {"name": cell.name, "seed": int(cell.seed), "namespace": cell.namespace, "kind": cell.kind,
                   "from": cell.source, "from_namespace": cell.source_namespace,
                   "gallery_n": study.report.gallery_n}
    return out


# -- results -------------------------------------------------------------------------------------------------------
def _num(value: Any) -> float:
    """A finite float, or NaN for anything missing."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _split_similarity(summary: Mapping[str, Any], group: str, statistic: str = "dataset_similarity") -> float:
    split = (summary.get("splits") or {}).get("source_duplicated") or {}
    return _num((split.get(group) or {}).get(statistic))


def results_row(cell: Mapping[str, Any], finetune: Mapping[str, Any], generate: Mapping[str, Any],
                summary: Mapping[str, Any], complexity: Mapping[str, Any],
                record: Mapping[str, Any]) -> dict[str, Any]:
    """One ``study_results`` row from a cell's info (``cell_parameters(...)["cell"]``), its finetune/generate
    parameters, ``replication_summary``, ``complexity_correlations`` and ``training_record``."""
    ci = list(summary.get("dataset_similarity_ci") or [math.nan, math.nan])
    fid, frechet = _num(summary.get("fid")), _num(summary.get("frechet_distance"))
    if not math.isnan(fid):
        quality, quality_name = fid, "FID"
    else:
        quality = frechet
        features = str(summary.get("frechet_features") or "copy descriptors")
        quality_name = f"Fréchet distance of {features}" + ("" if "not FID" in features else " (not FID)")
    clip = _num(summary.get("clipscore"))
    clip_reason = "" if not math.isnan(clip) else str((summary.get("clipscore_info") or {}).get("reason", "n/a"))
    entropy = complexity.get("entropy") or {}
    jpeg = complexity.get("jpeg_bytes") or {}
    entropy_ci = entropy.get("pearson_ci") or [math.nan, math.nan]
    background = summary.get("background") or {}
    descriptor = summary.get("descriptor") or {}
    return {
        "cell": cell["name"], "seed": int(cell["seed"]), "namespace": cell["namespace"], "kind": cell["kind"],
        "from_cell": cell.get("from") or "",
        "duplication": str(record.get("duplication", finetune.get("duplication"))),
        "ddf": _num(record.get("ddf", finetune.get("ddf"))),
        "caption_type": str(record.get("caption_type", finetune.get("caption_type"))),
        "train_mitigation": str(record.get("mitigation", finetune.get("mitigation"))),
        "inference_mitigation": str(generate.get("mitigation", "none")),
        "finetune_steps": int(record.get("steps_run", finetune.get("steps", 0)) or 0),
        "n_generations": int(summary.get("n_generations", 0) or 0),
        "dataset_similarity": _num(summary.get("dataset_similarity")),
        "dataset_similarity_ci_low": _num(ci[0]), "dataset_similarity_ci_high": _num(ci[1]),
        "fraction_above_0_5": _num(summary.get("fraction_above_0_5")),
        "mean_similarity": _num(summary.get("mean")),
        "quality": quality, "quality_name": quality_name, "fid": fid, "frechet_distance": frechet,
        "clipscore": clip, "clipscore_reason": clip_reason,
        "background_dataset_similarity": _num(background.get("dataset_similarity")),
        "duplicated_dataset_similarity": _split_similarity(summary, "duplicated"),
        "not_duplicated_dataset_similarity": _split_similarity(summary, "not_duplicated"),
        # few generations come from duplicated images' prompts (dup_fraction): their mean is the steadier statistic
        "duplicated_mean_similarity": _split_similarity(summary, "duplicated", "mean"),
        "not_duplicated_mean_similarity": _split_similarity(summary, "not_duplicated", "mean"),
        "n_duplicated_prompts": _split_similarity(summary, "duplicated", "n"),
        "entropy_pearson_r": _num(entropy.get("pearson_r")),
        "entropy_pearson_ci_low": _num(entropy_ci[0]), "entropy_pearson_ci_high": _num(entropy_ci[1]),
        "entropy_pearson_p": _num(entropy.get("pearson_p")),
        "jpeg_pearson_r": _num(jpeg.get("pearson_r")),
        "descriptor": str(descriptor.get("name", "")) if isinstance(descriptor, Mapping) else str(descriptor),
    }


def results_table(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    """``study_results``: the rows in :data:`RESULT_COLUMNS` order, sorted by cell and seed."""
    table = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    return table.sort_values(["kind", "cell", "seed"], ascending=[False, True, True]).reset_index(drop=True)


def over_seeds(results: pd.DataFrame, by: list[str], value: str = "dataset_similarity") -> pd.DataFrame:
    """Mean, min and max of ``value`` over seeds per group (``by``), with the number of seeds ``n``."""
    grouped = results.groupby(by, dropna=False, sort=True)[value]
    out = grouped.agg(["mean", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()
    return out


def baseline_cell(results: pd.DataFrame, row: Mapping[str, Any]) -> str | None:
    """The cell a mitigated cell is compared with: an inference cell's train cell, or the train cell with the same
    duplication, ddf and caption type and no mitigation."""
    if row["kind"] == "inference":
        return str(row["from_cell"])
    same = results[(results["kind"] == "train") & (results["train_mitigation"] == "none")
                   & (results["duplication"] == row["duplication"]) & (results["ddf"] == row["ddf"])
                   & (results["caption_type"] == row["caption_type"])]
    return str(same["cell"].iloc[0]) if not same.empty else None


def mitigation_table(results: pd.DataFrame) -> pd.DataFrame:
    """The Table-1 view: per mitigated cell, its baseline, similarity, quality and CLIPScore (means over seeds)."""
    by_cell = results.groupby("cell", sort=False)
    rows = []
    for cell, group in by_cell:
        first = group.iloc[0]
        if first["train_mitigation"] == "none" and first["inference_mitigation"] == "none":
            continue
        base = baseline_cell(results, first)
        base_rows = results[results["cell"] == base] if base else results.iloc[0:0]
        rows.append({
            "cell": cell, "stage": "inference" if first["kind"] == "inference" else "train",
            "mitigation": first["inference_mitigation"] if first["kind"] == "inference" else first["train_mitigation"],
            "baseline": base or "",
            "similarity": group["dataset_similarity"].mean(), "similarity_min": group["dataset_similarity"].min(),
            "similarity_max": group["dataset_similarity"].max(), "n": len(group),
            "baseline_similarity": base_rows["dataset_similarity"].mean() if len(base_rows) else math.nan,
            "quality": group["quality"].mean(),
            "baseline_quality": base_rows["quality"].mean() if len(base_rows) else math.nan,
            "quality_name": first["quality_name"],
            "clipscore": group["clipscore"].mean(), "clipscore_reason": first["clipscore_reason"],
        })
    return pd.DataFrame(rows)


def top_copies(scores: pd.DataFrame, generations: pd.DataFrame, training_set: pd.DataFrame,
               n: int) -> list[dict[str, Any]]:
    """The ``n`` generations most similar to their training match, with both images' PNG bytes."""
    if n <= 0 or scores.empty:
        return []
    best = scores.sort_values("top1_similarity", ascending=False, kind="stable").head(n)
    gen_png = dict(zip(generations["gen_id"], generations["image"], strict=True))
    train_png = dict(zip(training_set["image_id"], training_set["image"], strict=True))
    return [{"gen_id": r.gen_id, "match_image_id": r.match_image_id, "similarity": float(r.top1_similarity),
             "prompt": r.prompt, "generation": gen_png[r.gen_id], "training": train_png[r.match_image_id]}
            for r in best.itertuples() if r.gen_id in gen_png and r.match_image_id in train_png]


def seed_summary(results: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> dict[str, float]:
    """``study_metrics``: per cell, the mean dataset similarity over seeds (``<cell>.dataset_similarity_mean``), the
    pooled copy rates (``<cell>.copy_rate`` ...) when ``results`` has them, and per comparison its difference and
    whether it was reproduced (``comparison.<a>-<b>.<statistic>`` / ``...reproduced`` as 1.0 or 0.0)."""
    out: dict[str, float] = {}
    means = results.groupby("cell")["dataset_similarity"].mean()
    out.update({f"{cell}.dataset_similarity_mean": float(v) for cell, v in means.items() if np.isfinite(v)})
    for stat in ("copy_rate", "copy_rate_duplicated", "copy_rate_not_duplicated"):
        if f"cell_{stat}" in results.columns:
            pooled = results.groupby("cell")[f"cell_{stat}"].first()
            out.update({f"{cell}.{stat}": float(v) for cell, v in pooled.items() if np.isfinite(v)})
    for r in (comparisons.itertuples() if comparisons is not None else []):
        if np.isfinite(r.difference):
            out[f"comparison.{r.a}-{r.b}.{r.statistic}"] = float(r.difference)
            out[f"comparison.{r.a}-{r.b}.{r.statistic}.reproduced"] = float(r.verdict == "reproduced")
    return out
