"""Nodes of the complexity_analysis stage: thin wrappers over ``copying_study.metrics.complexity``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from copying_study.metrics.complexity import (
    MEASURES,
    RESAMPLE_FILTERS,
    correlate_with_similarity,
    flat_metrics,
    measure_settings,
    score_matches,
)
from copying_study.pipelines.complexity_analysis.plots import density_figure, scatter_figure
from copying_study.utils.params import check_keys

logger = logging.getLogger(__name__)

PARAM_KEYS = ("image_size", "resample", "jpeg_quality", "threshold", "n_boot", "confidence")


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """The ``complexity`` parameters, checked and typed; ``ValueError`` naming the bad key and what is allowed."""
    params = check_keys(params, PARAM_KEYS, "complexity")

    def number(key: str, kind: type, low: float, high: float, *, open_ends: bool = False) -> Any:
        value = params[key]
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        inside = ok_type and ((low < value < high) if open_ends else (low <= value <= high))
        if not inside:
            bounds = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
            raise ValueError(f"complexity.{key} must be {'an integer' if kind is int else 'a number'} in {bounds}, "
                             f"got {value!r}")
        return kind(value)

    if params["resample"] not in RESAMPLE_FILTERS:
        raise ValueError(f"complexity.resample must be one of {sorted(RESAMPLE_FILTERS)}, got {params['resample']!r}")
    return {
        "image_size": number("image_size", int, 8, 4096),
        "resample": params["resample"],
        "jpeg_quality": number("jpeg_quality", int, 1, 100),
        # "calibrated": the descriptor's copy threshold (descriptor_calibration), filled in by correlate_complexity
        "threshold": "calibrated" if params["threshold"] == "calibrated" else number("threshold", float, -1.0, 1.0),
        "n_boot": number("n_boot", int, 100, 1_000_000),
        "confidence": number("confidence", float, 0.0, 1.0, open_ends=True),
    }


def score_complexity(
    replication_scores: pd.DataFrame, training_set: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """``complexity_scores``: entropy, JPEG size and total variation of each generation's top-1 training match."""
    p = validate_params(params)
    scores = score_matches(
        replication_scores, training_set, size=p["image_size"], resample=p["resample"], jpeg_quality=p["jpeg_quality"]
    )
    logger.info("complexity: measured %d distinct matched training images for %d generations",
                scores["match_image_id"].nunique(), len(scores))
    return scores


def correlate_complexity(
    complexity_scores: pd.DataFrame, descriptor_calibration: dict[str, Any], params: dict[str, Any], seed: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """``complexity_correlations`` (the full report, with the measures' settings) and ``complexity_metrics``.
    ``complexity.threshold: calibrated`` splits "high similarity" at the descriptor's copy threshold."""
    p = validate_params(params)
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
            logger.info("complexity: %s vs similarity: Pearson r=%.3f (p=%.2g), Spearman rho=%.3f (p=%.2g), n=%d",
                        measure, result["pearson_r"], result["pearson_p"], result["spearman_r"],
                        result["spearman_p"], result["n"])
    return report, flat_metrics(report)


def plot_complexity_density(complexity_scores: pd.DataFrame, complexity_correlations: dict[str, Any]) -> Figure:
    """Densities of each measure above vs below the similarity threshold (the paper's Figure 7)."""
    return density_figure(complexity_scores, complexity_correlations)


def plot_complexity_scatter(complexity_scores: pd.DataFrame, complexity_correlations: dict[str, Any]) -> Figure:
    """Each measure against top-1 similarity, with the correlations in the panel titles."""
    return scatter_figure(complexity_scores, complexity_correlations)
