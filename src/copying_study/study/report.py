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
