"""Nodes of the complexity_analysis stage: thin wrappers over ``copying_study.metrics.complexity``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from copying_study.metrics.complexity import (
    MEASURES,
    correlate_with_similarity,
    flat_metrics,
    measure_settings,
    score_matches,
)
from copying_study.pipelines.complexity_analysis.plots import density_figure, scatter_figure
from copying_study.schemas import ComplexityParams

logger = logging.getLogger(__name__)

def score_complexity(
    replication_scores: pd.DataFrame, training_set: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """``complexity_scores``: entropy, JPEG size and total variation of each generation's top-1 training match."""
    p = ComplexityParams.from_params(params).as_dict()
    scores = score_matches(
        replication_scores, training_set, size=p["image_size"], resample=p["resample"], jpeg_quality=p["jpeg_quality"]
    )
    logger.debug("complexity: measured %d distinct matched training images for %d generations",
                scores["match_image_id"].nunique(), len(scores))
    return scores


def correlate_complexity(
    complexity_scores: pd.DataFrame, descriptor_calibration: dict[str, Any], params: dict[str, Any], seed: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """``complexity_correlations`` (the full report, with the measures' settings) and ``complexity_metrics``.
    ``complexity.threshold: calibrated`` splits "high similarity" at the descriptor's copy threshold."""
    p = ComplexityParams.from_params(params).as_dict()
    threshold = (float(descriptor_calibration["copy_threshold"]) if p["threshold"] == "calibrated"
                 else float(p["threshold"]))
    report = correlate_with_similarity(
        complexity_scores, threshold=threshold, n_boot=p["n_boot"], confidence=p["confidence"], seed=seed
    )
    report["threshold_source"] = ("descriptor_calibration (the copy threshold)" if p["threshold"] == "calibrated"
                                  else "complexity.threshold")
    report["settings"] = measure_settings(p["image_size"], p["resample"], p["jpeg_quality"])
    for message in report["messages"]:
        logger.warning("complexity: %s", message)
    for measure in MEASURES:
        result = report[measure]
        if result["status"] == "ok":
            logger.debug("complexity: %s vs similarity: Pearson r=%.3f (p=%.2g), Spearman rho=%.3f (p=%.2g), n=%d",
                        measure, result["pearson_r"], result["pearson_p"], result["spearman_r"],
                        result["spearman_p"], result["n"])
    return report, flat_metrics(report)


def plot_complexity_density(complexity_scores: pd.DataFrame, complexity_correlations: dict[str, Any]) -> Figure:
    """Densities of each measure above vs below the similarity threshold (the paper's Figure 7)."""
    return density_figure(complexity_scores, complexity_correlations)


def plot_complexity_scatter(complexity_scores: pd.DataFrame, complexity_correlations: dict[str, Any]) -> Figure:
    """Each measure against top-1 similarity, with the correlations in the panel titles."""
    return scatter_figure(complexity_scores, complexity_correlations)
