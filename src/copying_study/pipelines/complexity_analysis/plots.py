"""Figures of the complexity analysis (framework-free: matplotlib ``Figure`` objects, no pyplot state).

- ``density_figure``: for each measure, the density of the matched training images' complexity for generations
  with similarity above the threshold against those at or below it (the paper's Figure 7, left and middle).
- ``scatter_figure``: each measure against top-1 similarity, with the threshold and the correlations in the title.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

from copying_study.metrics.complexity import MEASURE_BOUNDS, MEASURES, SIMILARITY

ABOVE_COLOUR, BELOW_COLOUR = "#d62728", "#1f77b4"
_PANEL_SIZE = (5.0, 4.2)


def measure_label(measure: str, report: dict[str, Any]) -> str:
    """Axis label of ``measure`` with its unit (and JPEG quality) taken from the correlations report."""
    settings = report.get("settings", {})
    quality = settings.get("jpeg", {}).get("quality", "?")
    size = settings.get("image_size", "?")
    labels = {
        "entropy": f"histogram entropy ({report.get('entropy_unit', 'nats')})",
        "jpeg_bytes": f"JPEG size at quality {quality} (bytes, {size}x{size} px)",
        "total_variation": "total variation (mean |Δ grey|, 0-1)",
    }
    return labels[measure]


def _figure(n_panels: int, title: str) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(_PANEL_SIZE[0] * n_panels, _PANEL_SIZE[1]), layout="constrained", dpi=110)
    axes = fig.subplots(1, n_panels, squeeze=False)[0].tolist()
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _density(ax: Any, values: np.ndarray, bounds: tuple[float, float], colour: str, label: str) -> None:
    """A Gaussian KDE of ``values`` drawn inside ``bounds`` (filled) plus a rug; one distinct value is drawn as a
    vertical line."""
    if values.size == 0:
        ax.plot([], [], color=colour, label=f"{label} (n=0)")
        return
    label = f"{label} (n={values.size})"
    distinct = np.unique(values)
    if distinct.size == 1:
        ax.axvline(distinct[0], color=colour, linewidth=2, label=f"{label}, all = {distinct[0]:.4g}")
        return
    kde = gaussian_kde(values)
    reach = 3.0 * float(np.sqrt(kde.covariance[0, 0]))  # three bandwidths: the tails fade out
    grid = np.linspace(max(bounds[0], distinct[0] - reach), min(bounds[1], distinct[-1] + reach), 400)
    density = kde(grid)
    ax.fill_between(grid, density, color=colour, alpha=0.25)
    ax.plot(grid, density, color=colour, linewidth=2, label=label)
    ax.plot(values, np.zeros_like(values), "|", color=colour, markersize=10, alpha=0.5)


def density_figure(scores: pd.DataFrame, report: dict[str, Any]) -> Figure:
    """Densities of each measure for similarity above vs at/below the report's threshold (Figure 7)."""
    threshold = float(report["threshold"])
    fig, axes = _figure(len(MEASURES), f"Complexity of the top-1 training match, by similarity (threshold {threshold:g})")
    above = scores[SIMILARITY].to_numpy(dtype=np.float64) > threshold
    for ax, measure in zip(axes, MEASURES, strict=True):
        values = scores[measure].to_numpy(dtype=np.float64)
        bounds = MEASURE_BOUNDS[measure]
        _density(ax, values[~above], bounds, BELOW_COLOUR, f"similarity ≤ {threshold:g}")
        _density(ax, values[above], bounds, ABOVE_COLOUR, f"similarity > {threshold:g}")
        ax.set_xlabel(measure_label(measure, report))
        ax.set_ylabel("density")
        ax.set_title(measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
        if len(scores) == 0:
            ax.text(0.5, 0.5, "no rows to plot", ha="center", va="center", transform=ax.transAxes)
    return fig


def _correlation_title(measure: str, result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return f"{measure}\n" + textwrap.fill(f"not computable: {result['reason']}", width=50)

    def ci(kind: str) -> str:
        bounds = result[f"{kind}_ci"]
        return f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else ""

    return (
        f"{measure} (n={result['n']})\n"
        f"Pearson r = {result['pearson_r']:.3f}{ci('pearson')}, p = {result['pearson_p']:.2g}\n"
        f"Spearman ρ = {result['spearman_r']:.3f}{ci('spearman')}, p = {result['spearman_p']:.2g}"
    )


def scatter_figure(scores: pd.DataFrame, report: dict[str, Any]) -> Figure:
    """Each measure (x) against top-1 similarity (y), coloured by side of the threshold, with r in the titles."""
    threshold = float(report["threshold"])
    fig, axes = _figure(len(MEASURES), "Top-1 similarity against the complexity of the matched training image")
    similarity = scores[SIMILARITY].to_numpy(dtype=np.float64)
    above = similarity > threshold
    marker = 30 if len(scores) <= 500 else 8
    for ax, measure in zip(axes, MEASURES, strict=True):
        values = scores[measure].to_numpy(dtype=np.float64)
        ax.scatter(values[~above], similarity[~above], s=marker, alpha=0.6, color=BELOW_COLOUR,
                   edgecolors="none", label=f"≤ {threshold:g} (n={int((~above).sum())})")
        ax.scatter(values[above], similarity[above], s=marker, alpha=0.6, color=ABOVE_COLOUR,
                   edgecolors="none", label=f"> {threshold:g} (n={int(above.sum())})")
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(measure_label(measure, report))
        ax.set_ylabel("top-1 similarity")
        ax.set_title(_correlation_title(measure, report[measure]), fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=10,
               title="top-1 similarity", markerscale=1.5)
    return fig
