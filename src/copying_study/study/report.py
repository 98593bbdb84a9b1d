"""The study's HTML report: one self-contained page (inline PNG figures and thumbnails) over ``study_results``."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from copying_study.study.grid import _num, mitigation_table, over_seeds


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


def _cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its settings and the pooled statistics with intervals (``cell_*`` columns)."""
    return results.groupby("cell", sort=False).first().reset_index()


def _has(cells: pd.DataFrame, statistic: str) -> bool:
    return f"cell_{statistic}" in cells.columns and cells[f"cell_{statistic}"].notna().any()


def _ci(row: Any, statistic: str) -> str:
    get = (lambda k: row[k]) if isinstance(row, Mapping | pd.Series) else (lambda k: getattr(row, k))
    value = _num(get(f"cell_{statistic}"))
    if math.isnan(value):
        return "–"
    return f"{value:.3f} [{_num(get(f'cell_{statistic}_ci_low')):.3f}, {_num(get(f'cell_{statistic}_ci_high')):.3f}]"


LABELS = {"copy_rate": "copy rate (all prompts)", "copy_rate_duplicated": "copy rate (prompts of duplicated images)",
          "copy_rate_not_duplicated": "copy rate (prompts of other images)",
          "dataset_similarity": "dataset similarity (95th pct of top-1)"}


DUPLICATION_COLOURS = {"full": "tab:red", "partial": "tab:blue", "none": "tab:grey"}  # the same in every figure


def _common_caption(plain: pd.DataFrame) -> pd.DataFrame:
    """The (non-empty) cells at the grid's most common caption type."""
    return plain[plain["caption_type"] == plain["caption_type"].mode().iloc[0]]


def _main_steps(plain: pd.DataFrame) -> pd.DataFrame:
    """The cells at the grid's most common training length (ties: the longest), so that a sweep over steps does not
    put several points of one setting on the ddf figures."""
    if "finetune_steps" not in plain.columns or plain["finetune_steps"].nunique() <= 1:
        return plain
    counts = plain["finetune_steps"].value_counts()
    steps = max(counts[counts == counts.max()].index)
    return plain[plain["finetune_steps"] == steps]


def _ddf_points(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Plain cells (original-caption type of the grid, no mitigation, the grid's main training length) by
    duplication, the no-duplication cell at ddf 1 shared by both lines."""
    plain = _plain(cells)
    if plain.empty:
        return {}
    plain = _main_steps(_common_caption(plain))
    none = plain[plain["duplication"] == "none"].assign(ddf=1.0)
    return {d: pd.concat([none, plain[plain["duplication"] == d]]).sort_values("ddf")
            for d in ("full", "partial") if (plain["duplication"] == d).any()}


def _ddf_figure(cells: pd.DataFrame, statistics: list[str], title: str) -> str:
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    points = _ddf_points(cells)
    statistics = [s for s in statistics if _has(cells, s)]
    if not points or not statistics:
        return "<p>No cell without mitigations, or no copy statistics (study_generations is empty).</p>"
    fig = Figure(figsize=(4.6 * len(statistics), 3.4), layout="constrained")  # no label over its neighbour
    axes = fig.subplots(1, len(statistics), squeeze=False)[0]
    rows = []
    for ax, stat in zip(axes, statistics, strict=True):
        for duplication, pts in points.items():
            y = pts[f"cell_{stat}"].to_numpy(float)
            lo, hi = pts[f"cell_{stat}_ci_low"].to_numpy(float), pts[f"cell_{stat}_ci_high"].to_numpy(float)
            ax.errorbar(pts["ddf"], y, yerr=[y - lo, hi - y], marker="o", capsize=3,
                        color=DUPLICATION_COLOURS[duplication], label=f"{duplication} duplication")
        ax.set_xscale("log")
        ax.set_xlabel("data duplication factor (ddf; 1 = no duplication)")
        ax.set_ylabel(LABELS[stat].replace(" (", "\n("), fontsize=9)  # two lines: clear of the title
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    seen: set[str] = set()
    for duplication, pts in points.items():
        pts = pts[~pts["cell"].isin(seen)]  # the no-duplication cell starts both lines: one row
        seen.update(pts["cell"])
        rows += [f"<tr><td>{html.escape(r.cell)}</td><td>{duplication if r.duplication != 'none' else 'none'}</td>"
                 f"<td>{_fmt(r.ddf, 0)}</td>" + "".join(f"<td>{_ci(r, s)}</td>" for s in statistics) + "</tr>"
                 for r in pts.itertuples()]
    head = "".join(f"<th>{LABELS[s]} [95% CI]</th>" for s in statistics)
    table = f"<table><tr><th>cell</th><th>duplication</th><th>ddf</th>{head}</tr>{''.join(rows)}</table>"
    return _figure_tag(fig, title) + table


def _headline_section(results: pd.DataFrame) -> str:
    cells = _cells(results)
    return ("<p class='paper'>Paper (Fig. 5, §5.3): copying rises with the duplication factor under full duplication "
            "(image and caption duplicated); partial duplication (the image duplicated with different captions) "
            "stays below full.</p>"
            + _ddf_figure(cells, ["copy_rate", "copy_rate_duplicated"],
                          "copy rate against ddf, original captions, no mitigation; bars: 95% CI over seeds and "
                          "generations"))


def _findings_section(comparisons: pd.DataFrame) -> str:
    if comparisons is None or comparisons.empty:
        return "<p>No comparisons are configured (study.comparisons).</p>"
    lines = []
    for r in comparisons.itertuples():
        sign = ">" if r.expect == "greater" else "<"
        colour = {"reproduced": "#d7f5d7", "opposite": "#f8d0d0"}.get(r.verdict, "#f3f3f3")
        diff = "–" if math.isnan(_num(r.difference)) else f"{r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        lines.append(f"<tr><td>{html.escape(str(r.finding))}</td><td>{html.escape(r.a)} − {html.escape(r.b)}</td>"
                     f"<td>{html.escape(r.statistic)}</td><td>{_fmt(r.a_value)} vs {_fmt(r.b_value)}</td>"
                     f"<td>{diff}</td><td>{sign} 0</td><td>{int(r.n_seeds)}</td>"
                     f"<td style='background:{colour}'>{html.escape(r.verdict)}"
                     f"{(' (' + html.escape(str(r.note)) + ')') if r.note else ''}</td></tr>")
    return ("<p>Each row: a difference the paper states, paired by seed, with its 95% two-stage bootstrap interval "
            "(seeds, then generations). <b>reproduced</b>: the interval excludes 0 on the paper's side; "
            "<b>opposite</b>: it excludes 0 on the other side; <b>not resolved</b>: it contains 0.</p>"
            "<table><tr><th>finding</th><th>cells</th><th>statistic</th><th>a vs b</th>"
            "<th>difference [95% CI]</th><th>paper</th><th>seeds</th><th>verdict</th></tr>"
            + "".join(lines) + "</table>")


def _similarity_section(results: pd.DataFrame) -> str:
    return ("<p class='paper'>Paper (Fig. 5): dataset similarity rises with ddf under full duplication, less under "
            "partial duplication.</p>"
            + _ddf_figure(_cells(results), ["dataset_similarity"],
                          "dataset similarity against ddf; bars: 95% CI over seeds and generations"))


def _steps_section(results: pd.DataFrame) -> str:
    """Fig. 6 (left): the copy statistics over training steps, one line per (duplication, ddf) setting of the plain
    cells (no mitigation, the grid's most common caption type), bars = each cell's 95% interval."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    cells = _plain(_cells(results))
    if cells.empty or "finetune_steps" not in cells.columns or cells["finetune_steps"].nunique() <= 1:
        steps = sorted(set(int(s) for s in cells.get("finetune_steps", pd.Series(dtype=int)).dropna()))
        return (f"<p>Every cell trains the same number of steps ({', '.join(map(str, steps)) or '–'}): this grid has no "
                "sweep over training steps (conf/fig6 has one).</p>")
    cells = _common_caption(cells)
    stats = [s for s in ("copy_rate", "copy_rate_duplicated", "dataset_similarity") if _has(cells, s)]
    if not stats:
        return "<p>No copy statistics (study_generations is empty).</p>"
    fig = Figure(figsize=(4.6 * len(stats), 3.4), layout="constrained")
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    groups = list(cells.groupby(["duplication", "ddf"], sort=True))
    for ax, stat in zip(axes, stats, strict=True):
        for (duplication, ddf), pts in groups:
            pts = pts.sort_values("finetune_steps")
            y = pts[f"cell_{stat}"].to_numpy(float)
            if pd.isna(y).all():
                continue
            lo, hi = pts[f"cell_{stat}_ci_low"].to_numpy(float), pts[f"cell_{stat}_ci_high"].to_numpy(float)
            label = "no duplication" if duplication == "none" else f"{duplication} duplication, ddf {ddf:g}"
            ax.errorbar(pts["finetune_steps"], y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=label,
                        color=DUPLICATION_COLOURS.get(duplication, "tab:grey"))
        ax.set_xlabel("finetuning steps")
        ax.set_ylabel(LABELS[stat].replace(" (", "\n("), fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("copying over training steps, no mitigation; bars: 95% CI over seeds and generations", fontsize=9)
    rows = "".join(f"<tr><td>{html.escape(r.cell)}</td><td>{html.escape(str(r.duplication))}</td>"
                   f"<td>{_fmt(r.ddf, 0)}</td><td>{int(r.finetune_steps)}</td>"
                   + "".join(f"<td>{_ci(r, s)}</td>" for s in stats) + "</tr>"
                   for r in cells.sort_values(["duplication", "ddf", "finetune_steps"]).itertuples())
    head = "".join(f"<th>{LABELS[s]} [95% CI]</th>" for s in stats)
    return ("<p class='paper'>Paper (Fig. 6 left): similarity rises with training iterations; image-and-caption "
            "(full) duplication reaches the highest values, image-only (partial) duplication stays lower at every "
            "iteration.</p>" + _figure_tag(fig, "copying over training steps")
            + f"<table><tr><th>cell</th><th>duplication</th><th>ddf</th><th>steps</th>{head}</tr>{rows}</table>")


def _caption_section(results: pd.DataFrame) -> str:
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    cells = _plain(_cells(results))
    cells = _main_steps(cells[cells["duplication"] != "none"])
    if cells.empty:
        return "<p>No duplicated cell without mitigations.</p>"
    setting = cells.groupby(["duplication", "ddf"])["caption_type"].nunique().idxmax()
    subset = cells[(cells["duplication"] == setting[0]) & (cells["ddf"] == setting[1])].sort_values("caption_type")
    stats = [s for s in ("copy_rate", "dataset_similarity") if _has(subset, s)]
    if not stats:
        return "<p>No copy statistics.</p>"
    fig = Figure(figsize=(4.6 * len(stats), 3.2), layout="constrained")
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, stat in zip(axes, stats, strict=True):
        y = subset[f"cell_{stat}"].to_numpy(float)
        err = [y - subset[f"cell_{stat}_ci_low"].to_numpy(float), subset[f"cell_{stat}_ci_high"].to_numpy(float) - y]
        ax.bar(subset["caption_type"], y, yerr=err, capsize=4, color="tab:purple")
        ax.set_ylabel(LABELS[stat])
    fig.suptitle(f"{setting[0]} duplication, ddf {setting[1]:g}; bars: 95% CI", fontsize=9)
    rows = "".join(f"<tr><td>{html.escape(str(r.caption_type))}</td><td>{html.escape(r.cell)}</td>"
                   + "".join(f"<td>{_ci(r, s)}</td>" for s in stats) + "</tr>" for r in subset.itertuples())
    head = "".join(f"<th>{LABELS[s]} [95% CI]</th>" for s in stats)
    return ("<p class='paper'>Paper (Fig. 4): the fixed caption copies least, the original (or BLIP) captions most; "
            "random captions copy less than the original ones: captions must be specific and correlated with the "
            "image content to act as keys.</p>" + _figure_tag(fig, "copying by caption type")
            + f"<table><tr><th>caption type</th><th>cell</th>{head}</tr>{rows}</table>")


def _mitigation_section(results: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    table = mitigation_table(results)
    if table.empty:
        return "<p>No mitigation cell in this grid.</p>"
    cells = _cells(results).set_index("cell")
    diffs = {}
    if comparisons is not None and not comparisons.empty:
        for r in comparisons[comparisons["statistic"] == "copy_rate"].itertuples():
            diffs[(r.a, r.b)] = r
    lines = []
    for r in table.itertuples():
        clip = _fmt(r.clipscore, 2) if not math.isnan(_num(r.clipscore)) else f"n/a ({html.escape(r.clipscore_reason)})"
        d = diffs.get((r.cell, r.baseline))
        delta = (f"{d.difference:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}] {d.verdict}" if d is not None
                 and not math.isnan(_num(d.difference)) else "–")
        base = cells.loc[r.baseline] if r.baseline in cells.index else None
        lines.append(
            f"<tr><td>{r.stage}</td><td>{html.escape(r.mitigation)}</td><td>{html.escape(r.cell)}</td>"
            f"<td>{_ci(cells.loc[r.cell], 'copy_rate') if 'cell_copy_rate' in cells else '–'}</td>"
            f"<td>{html.escape(r.baseline)}: {_ci(base, 'copy_rate') if base is not None and 'cell_copy_rate' in cells else '–'}</td>"
            f"<td>{delta}</td>"
            f"<td>{_ci(cells.loc[r.cell], 'dataset_similarity') if 'cell_dataset_similarity' in cells else '–'}</td>"
            f"<td>{_fmt(r.quality, 3)} (baseline {_fmt(r.baseline_quality, 3)})</td><td>{clip}</td></tr>")
    names = sorted(set(table["quality_name"]))
    return ("<p class='paper'>Paper (§7, Table 1): every mitigation lowers copying at a small cost in quality; "
            "MC is the strongest at train time, random token/number insertion (RT, RNA) at inference.</p>"
            "<table><tr><th>stage</th><th>mitigation</th><th>cell</th><th>copy rate [95% CI]</th>"
            "<th>baseline copy rate</th><th>difference (paired by seed)</th><th>dataset similarity</th>"
            "<th>quality (lower is better)</th><th>text alignment (CLIPScore)</th></tr>"
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
    p_small = results.groupby("cell")["entropy_pearson_p"].apply(lambda p: int((p < 0.05).sum()))
    fig = Figure(figsize=(7, 0.3 * len(stats) + 1.2))
    ax = fig.subplots()
    ax.errorbar(stats["mean"], stats["cell"], xerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                fmt="o", capsize=3)
    ax.axvline(0, color="grey")
    ax.set_xlabel("Pearson r: entropy of the matched training image vs similarity (min–max over seeds)")
    rows = "".join(f"<tr><td>{html.escape(r.cell)}</td><td>{_interval(r.mean, r.min, r.max, r.n)}</td>"
                   f"<td>{p_small.get(r.cell, 0)} of {r.n}</td><td>{_fmt(jpeg.get(r.cell))}</td></tr>"
                   for r in stats.itertuples())
    return ("<p class='paper'>Paper (Fig. 7): simpler training images are copied more: negative correlation of "
            "similarity with entropy (r = −0.32) and with JPEG size (r = −0.29).</p>"
            + _figure_tag(fig, "complexity correlations") + "<table><tr><th>cell</th>"
            "<th>entropy r: mean [min, max] over seeds</th><th>seeds with p &lt; 0.05</th><th>JPEG-size r (mean)</th>"
            "</tr>" + rows + "</table>")


def _results_section(results: pd.DataFrame) -> str:
    shown = ["cell", "seed", "duplication", "ddf", "caption_type", "train_mitigation", "inference_mitigation",
             "copy_rate", "copy_rate_duplicated", "copy_rate_not_duplicated", "dataset_similarity", "dataset_similarity_ci_low", "dataset_similarity_ci_high", "fraction_above_0_5",
             "mean_similarity", "quality", "duplicated_dataset_similarity", "not_duplicated_dataset_similarity",
             "entropy_pearson_r"]
    table = results[[c for c in shown if c in results.columns]].to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="–", border=0)
    return f"<div style='overflow-x:auto'>{table}</div>"


CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0;
font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}h2{border-bottom:2px solid #444;
margin-top:2em}.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;font-size:11px;width:150px}
img.thumb{width:64px;height:64px;image-rendering:pixelated;margin-right:2px}img:not(.thumb){max-width:100%;height:auto}
p.paper{background:#eef3fb;border-left:4px solid #4a78c2;padding:4px 8px}"""

SECTIONS: tuple[str, ...] = ("Copy rate against the duplication factor", "The paper's findings, tested",
                             "Dataset similarity against the duplication factor (Fig. 5)",
                             "Copying over training steps (Fig. 6)", "Caption types (Fig. 4)",
                             "Mitigations (Table 1)", "Complexity (Fig. 7)", "Strongest copies per cell",
                             "All results", "Run record")


def render_report(results: pd.DataFrame, comparisons: pd.DataFrame | None,
                  galleries: Mapping[str, list[Mapping[str, Any]]], run_info: Mapping[str, Any]) -> str:
    """The study report: one self-contained HTML page with every view in :data:`SECTIONS`, the headline figure
    first."""
    bodies = [_headline_section(results), _findings_section(comparisons), _similarity_section(results),
              _steps_section(results), _caption_section(results), _mitigation_section(results, comparisons), _complexity_section(results),
              _gallery_section(galleries), _results_section(results)]
    record = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                     for k, v in run_info.items())
    bodies.append(f"<table>{record}</table>" if record else "<p>No run record available.</p>")
    descriptor = ", ".join(sorted(set(results["descriptor"]))) or "–"
    intro = (f"<p>{results['cell'].nunique()} cells × {results['seed'].nunique()} seeds = {len(results)} runs; "
             f"copy descriptor: {html.escape(descriptor)}. A generation is a <b>copy</b> when its top-1 similarity "
             "to the training set reaches the descriptor's calibrated copy threshold (descriptor_calibration). "
             "Copy rate = share of generations that are copies; dataset similarity = 95th percentile of top-1. "
             "Intervals: 95% two-stage bootstrap (seeds, then generations within each seed). Blue boxes state the "
             "paper's direction.</p>")
    sections = "".join(f"<h2>{html.escape(title, quote=False)}</h2>{body}" for title, body in zip(SECTIONS, bodies, strict=True))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>copying_study: study report</title>"
            f"<style>{CSS}</style></head><body><h1>copying_study: study report</h1>{intro}{sections}</body></html>")
