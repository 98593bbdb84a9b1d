"""The paper's experiment grid without Kedro: grid expansion, parameter merging, the results table and the report.

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
:func:`cell_parameters` merges base stage parameters ← ``shared`` ← the cell's overrides. :func:`results_row` turns
one cell's outputs into a row of ``study_results``; :func:`render_report` writes the HTML page.
"""

from __future__ import annotations

import base64
import copy
import html
import io
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


# -- report --------------------------------------------------------------------------------------------------------
def _figure_tag(fig: Any, alt: str) -> str:
    """The figure as an inline base64 PNG ``<img>``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img class="thumb" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(value: Any, digits: int = 3) -> str:
    number = _num(value)
    return "–" if math.isnan(number) else f"{number:.{digits}f}"


def _interval(mean: float, low: float, high: float, n: int) -> str:
    if math.isnan(_num(mean)):
        return "–"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]" if n > 1 else f"{mean:.3f}"


def _plain(results: pd.DataFrame) -> pd.DataFrame:
    return results[(results["train_mitigation"] == "none") & (results["inference_mitigation"] == "none")]


def _ddf_section(results: pd.DataFrame) -> str:
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    plain = _plain(results)
    if plain.empty:
        return "<p>No cell without mitigations.</p>"
    caption = plain["caption_type"].mode().iloc[0]
    plain = plain[plain["caption_type"] == caption]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    lines = []
    for duplication, colour in (("full", "tab:red"), ("partial", "tab:blue")):
        stats = over_seeds(plain[plain["duplication"] == duplication], ["ddf"])
        if stats.empty:
            continue
        ax.errorbar(stats["ddf"], stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                    marker="o", capsize=3, color=colour, label=f"{duplication} duplication")
        lines += [f"<tr><td>{duplication}</td><td>{_fmt(r.ddf, 0)}</td><td>{_interval(r.mean, r.min, r.max, r.n)}"
                  f"</td><td>{r.n}</td></tr>" for r in stats.itertuples()]
    none = over_seeds(plain[plain["duplication"] == "none"], ["duplication"])
    for r in none.itertuples():
        ax.axhline(r.mean, color="grey", linewidth=0.8)
        ax.errorbar([1], [r.mean], yerr=[[r.mean - r.min], [r.max - r.mean]], marker="s", capsize=3, color="grey",
                    label="no duplication (ddf 1)")
        lines.append(f"<tr><td>none</td><td>1</td><td>{_interval(r.mean, r.min, r.max, r.n)}</td><td>{r.n}</td></tr>")
    background = results["background_dataset_similarity"].dropna()
    if not background.empty:
        ax.axhline(float(background.iloc[0]), color="black", linestyle="--", label="training-set background")
    ax.set_xlabel("data duplication factor (ddf)")
    ax.set_ylabel("dataset similarity (95th pct)")
    ax.set_title(f"caption type '{caption}', no mitigation; bars: min–max over seeds", fontsize=9)
    ax.legend(fontsize=8)
    table = ("<table><tr><th>duplication</th><th>ddf</th><th>dataset similarity: mean [min, max] over seeds</th>"
             "<th>seeds</th></tr>" + "".join(lines) + "</table>")
    return _figure_tag(fig, "similarity vs ddf") + table


def _caption_section(results: pd.DataFrame) -> str:
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    plain = _plain(results)
    plain = plain[plain["duplication"] != "none"]
    if plain.empty:
        return "<p>No duplicated cell without mitigations.</p>"
    # the (duplication, ddf) setting with the most caption types is the comparison
    setting = plain.groupby(["duplication", "ddf"])["caption_type"].nunique().idxmax()
    subset = plain[(plain["duplication"] == setting[0]) & (plain["ddf"] == setting[1])]
    stats = over_seeds(subset, ["caption_type"])
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    ax.bar(stats["caption_type"], stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
           capsize=4, color="tab:purple")
    ax.set_ylabel("dataset similarity (95th pct)")
    ax.set_title(f"{setting[0]} duplication, ddf {setting[1]:g}; bars: min–max over seeds", fontsize=9)
    rows = "".join(f"<tr><td>{html.escape(str(r.caption_type))}</td><td>{_interval(r.mean, r.min, r.max, r.n)}</td>"
                   f"<td>{r.n}</td></tr>" for r in stats.itertuples())
    return (_figure_tag(fig, "similarity by caption type") + "<table><tr><th>caption type</th>"
            "<th>dataset similarity: mean [min, max]</th><th>seeds</th></tr>" + rows + "</table>")


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


def _mitigation_section(results: pd.DataFrame) -> str:
    table = mitigation_table(results)
    if table.empty:
        return "<p>No mitigation cell in this grid.</p>"
    lines = []
    for r in table.itertuples():
        clip = _fmt(r.clipscore, 2) if not math.isnan(_num(r.clipscore)) else f"n/a ({html.escape(r.clipscore_reason)})"
        lines.append(
            f"<tr><td>{r.stage}</td><td>{html.escape(r.mitigation)}</td><td>{html.escape(r.cell)}</td>"
            f"<td>{_interval(r.similarity, r.similarity_min, r.similarity_max, r.n)}</td>"
            f"<td>{html.escape(r.baseline)}: {_fmt(r.baseline_similarity)}</td>"
            f"<td>{_fmt(r.quality, 2)} (baseline {_fmt(r.baseline_quality, 2)})</td><td>{clip}</td></tr>")
    names = sorted(set(table["quality_name"]))
    return ("<table><tr><th>stage</th><th>mitigation</th><th>cell</th><th>dataset similarity: mean [min, max]</th>"
            "<th>baseline similarity</th><th>quality (lower is better)</th><th>text alignment (CLIPScore)</th></tr>"
            + "".join(lines) + "</table>" + f"<p>Quality: {html.escape('; '.join(names))}.</p>")


def _gallery_section(galleries: Mapping[str, list[Mapping[str, Any]]]) -> str:
    parts = []
    for regime, items in galleries.items():
        if not items:
            continue
        cells = "".join(
            f"<figure>{_png_tag(item['generation'], 'generation')}{_png_tag(item['training'], 'training match')}"
            f"<figcaption>{_fmt(item['similarity'])}<br>{html.escape(str(item['prompt']))[:60]}</figcaption></figure>"
            for item in items)
        parts.append(f"<h3>{html.escape(regime)}</h3><div class='gallery'>{cells}</div>")
    if not parts:
        return "<p>No galleries (study.report.gallery_n is 0).</p>"
    return "<p>Each pair: generation (left), its top-1 training match (right), similarity and prompt.</p>" + "".join(parts)


def _complexity_section(results: pd.DataFrame) -> str:
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    stats = over_seeds(results, ["cell"], "entropy_pearson_r").dropna(subset=["mean"])
    if stats.empty:
        return "<p>No complexity correlation could be computed.</p>"
    jpeg = over_seeds(results, ["cell"], "jpeg_pearson_r").set_index("cell")["mean"]
    fig = Figure(figsize=(7, 0.3 * len(stats) + 1.2))
    ax = fig.subplots()
    ax.errorbar(stats["mean"], stats["cell"], xerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                fmt="o", capsize=3)
    ax.axvline(0, color="grey")
    ax.set_xlabel("Pearson r: entropy of the matched training image vs similarity (min–max over seeds)")
    rows = "".join(f"<tr><td>{html.escape(r.cell)}</td><td>{_interval(r.mean, r.min, r.max, r.n)}</td>"
                   f"<td>{_fmt(jpeg.get(r.cell))}</td></tr>" for r in stats.itertuples())
    return (_figure_tag(fig, "complexity correlations") + "<p>Negative r: simpler images are copied more "
            "(the paper: r = −0.32 for entropy, −0.29 for JPEG size).</p><table><tr><th>cell</th>"
            "<th>entropy r: mean [min, max]</th><th>JPEG-size r (mean)</th></tr>" + rows + "</table>")


def _results_section(results: pd.DataFrame) -> str:
    shown = ["cell", "seed", "duplication", "ddf", "caption_type", "train_mitigation", "inference_mitigation",
             "dataset_similarity", "dataset_similarity_ci_low", "dataset_similarity_ci_high", "fraction_above_0_5",
             "mean_similarity", "quality", "duplicated_dataset_similarity", "not_duplicated_dataset_similarity",
             "entropy_pearson_r"]
    table = results[shown].to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="–", border=0)
    return f"<div style='overflow-x:auto'>{table}</div>"


CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0;
font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}h2{border-bottom:2px solid #444;
margin-top:2em}.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;font-size:11px;width:150px}
img.thumb{width:64px;height:64px;image-rendering:pixelated;margin-right:2px}"""

SECTIONS: tuple[str, ...] = ("Similarity vs duplication factor", "Similarity by caption type",
                             "Mitigations (Table 1)", "Strongest copies per regime", "Complexity",
                             "All results", "Run record")


def render_report(results: pd.DataFrame, galleries: Mapping[str, list[Mapping[str, Any]]],
                  run_info: Mapping[str, Any]) -> str:
    """The study report: one self-contained HTML page with every view in :data:`SECTIONS`."""
    bodies = [_ddf_section(results), _caption_section(results), _mitigation_section(results),
              _gallery_section(galleries), _complexity_section(results), _results_section(results)]
    record = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                     for k, v in run_info.items())
    bodies.append(f"<table>{record}</table>" if record else "<p>No run record available.</p>")
    descriptor = ", ".join(sorted(set(results["descriptor"]))) or "–"
    intro = (f"<p>{results['cell'].nunique()} cells × {results['seed'].nunique()} seeds = {len(results)} runs; "
             f"copy descriptor: {html.escape(descriptor)}. Dataset similarity = 95th percentile of the top-1 "
             "similarity of each generation to the training set; intervals are min–max over seeds.</p>")
    sections = "".join(f"<h2>{html.escape(title)}</h2>{body}" for title, body in zip(SECTIONS, bodies, strict=True))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>copying_study: study report</title>"
            f"<style>{CSS}</style></head><body><h1>copying_study: study report</h1>{intro}{sections}</body></html>")


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


def seed_summary(results: pd.DataFrame) -> dict[str, float]:
    """``study_metrics``: per cell, the mean dataset similarity over seeds (``<cell>.dataset_similarity``)."""
    means = results.groupby("cell")["dataset_similarity"].mean()
    return {f"{cell}.dataset_similarity_mean": float(v) for cell, v in means.items() if np.isfinite(v)}
