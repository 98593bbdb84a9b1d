"""Figures of the duplicate clusters: a gallery of the largest clusters and the cluster-size distribution."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from copying_study.utils.images import decode_image


def cluster_gallery(
    clusters: pd.DataFrame, summary: pd.DataFrame, images: Mapping[str, bytes], n_clusters: int, n_images: int,
    title: str,
) -> Figure:
    """One row per cluster (the ``n_clusters`` largest of two or more images), up to ``n_images`` members side by
    side, labelled with the cluster's size and caption similarity."""
    top = summary.sort_values(["size", "cluster_id"], ascending=[False, True]).head(n_clusters)
    if top.empty:
        fig = Figure(figsize=(6, 1.5), constrained_layout=True)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no duplicate clusters\n{title}", ha="center", va="center")
        return fig
    n_images = int(min(n_images, top["size"].max()))
    fig = Figure(figsize=(1.3 * n_images, 1.45 * len(top)), constrained_layout=True)
    axes = fig.subplots(len(top), n_images, squeeze=False)
    for row, (_, c) in enumerate(top.iterrows()):
        members = clusters.loc[clusters["cluster_id"] == c["cluster_id"], "image_id"].tolist()[:n_images]
        for col in range(n_images):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(members):
                ax.imshow(np.asarray(decode_image(images[members[col]])))
        sim = c["caption_similarity"]
        axes[row, 0].set_ylabel(f"#{c['cluster_id']}\nn={c['size']}\ncap={sim:.2f}", fontsize=7, rotation=0,
                                ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return fig


def cluster_size_histogram(clusters: pd.DataFrame, min_cluster_size: int, title: str) -> Figure:
    """Number of clusters of each size (log scale), with the reportable size marked."""
    sizes = clusters.drop_duplicates("cluster_id")["cluster_size"].to_numpy()
    values, counts = np.unique(sizes, return_counts=True)
    fig = Figure(figsize=(6.5, 3.8), constrained_layout=True)
    ax = fig.subplots()
    ax.bar(values, counts, width=0.8 if values.max() < 60 else max(1.0, values.max() / 80), color="tab:blue")
    ax.set_yscale("log")
    ax.axvline(min_cluster_size - 0.5, color="black", linestyle="--", linewidth=1)
    ax.text(min_cluster_size - 0.5, counts.max(), f" reportable (>= {min_cluster_size})", fontsize=8, va="top")
    ax.set_xlabel("cluster size (images)")
    ax.set_ylabel("number of clusters")
    ax.set_title(title, fontsize=9)
    return fig
