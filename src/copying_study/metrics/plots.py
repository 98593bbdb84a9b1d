"""Figures for the reports: similarity histograms against a baseline and galleries of image pairs.

Each function returns a matplotlib ``Figure`` object (saved by Kedro's ``matplotlib.MatplotlibDataset``), made
without pyplot: no global figure state and no backend choice, so a notebook's backend is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


def similarity_histogram(
    groups: Mapping[str, Sequence[float] | np.ndarray],
    thresholds: Sequence[float] = (0.5,),
    bins: int = 40,
    title: str = "Top-1 similarity",
    xlabel: str = "similarity to nearest training image",
) -> Figure:
    """Overlaid density histograms of several similarity samples (e.g. generations vs the training background),
    with dashed vertical lines at ``thresholds``. Bins are shared, over the range of all samples."""
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in groups.items() if len(v)}
    if not arrays:
        raise ValueError("similarity_histogram: no samples to plot")
    lo = min(float(a.min()) for a in arrays.values())
    hi = max(float(a.max()) for a in arrays.values())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, int(bins) + 1)
    fig = Figure(figsize=(7, 4.2), constrained_layout=True)
    ax = fig.subplots()
    for name, a in arrays.items():
        ax.hist(a, bins=edges, density=True, alpha=0.5, label=f"{name} (n={a.size}, p95={np.percentile(a, 95):.3f})")
    for t in thresholds:
        ax.axvline(float(t), color="black", linestyle="--", linewidth=1)
        ax.text(float(t), ax.get_ylim()[1] * 0.97, f" {t:g}", va="top", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def pair_gallery(
    pairs: Sequence[tuple[Image.Image, Image.Image, str]],
    left_label: str = "generation",
    right_label: str = "training match",
    columns: int = 2,
    title: str = "",
    thumb_inches: float = 1.6,
) -> Figure:
    """A grid of image pairs: each pair is (left image, right image, caption), shown side by side with the caption
    above; ``columns`` pairs per row."""
    if not pairs:
        raise ValueError("pair_gallery: no pairs to show")
    columns = max(1, min(int(columns), len(pairs)))
    rows = -(-len(pairs) // columns)
    fig = Figure(figsize=(2 * columns * thumb_inches, rows * (thumb_inches + 0.45)), constrained_layout=True)
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (left, right, caption) in enumerate(pairs):
        r, c = divmod(n, columns)
        for j, (img, label) in enumerate(((left, left_label), (right, right_label))):
            ax = axes[r, 2 * c + j]
            ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
            ax.set_title(f"{label} {caption}" if j == 0 else label, fontsize=7, loc="left" if j == 0 else "center")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def sample_grid_figures(grids: dict[int, np.ndarray]) -> dict[str, Any]:
    """One figure per sampled step: each row is a training image and two generations from its training caption."""
    figures = {}
    for step, grid in sorted(grids.items()):
        h, w = grid.shape[:2]
        fig = Figure(figsize=(max(3.5, w / 16), max(3.0, h / 16)), dpi=100)
        ax = fig.subplots()
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(f"step {step}: training image | two samples", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        figures[f"step_{int(step):07d}.png"] = fig
    return figures
