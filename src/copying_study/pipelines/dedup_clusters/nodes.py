"""Nodes of ``dedup_clusters`` (thin: the work is in ``dedup.py``, ``copying_study.descriptors`` and ``.search``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from copying_study.data import dedup
from copying_study.descriptors import load_descriptor
from copying_study.pipelines.dedup_clusters.plots import cluster_gallery, cluster_size_histogram
from copying_study.schemas import DedupParams
from copying_study.utils.device import pick_device

logger = logging.getLogger(__name__)


def compute_train_descriptors(training_set: pd.DataFrame, params: Mapping[str, Any], device: str) -> dict[str, Any]:
    """Copy descriptors of every training image, rows in ``training_set`` order, with the descriptor's meta (in this
    process or on Dask: ``dedup.distributed``)."""
    p = DedupParams.from_params(params).as_dict()
    dedup.check_table(training_set, ("image_id", "image"))
    embeddings, row_info, meta = dedup.describe_images(training_set["image"].tolist(), p, device)
    logger.debug("train_descriptors: %d x %d (%s)", *embeddings.shape, meta["name"])
    out = {"embeddings": embeddings, "image_ids": training_set["image_id"].astype(str).tolist(), "meta": meta}
    return {**out, "row_info": row_info} if row_info else out


def calibrate_descriptor(params: Mapping[str, Any], device: str) -> dict[str, Any]:
    """``descriptor_calibration``: the descriptor's copy threshold and its false-positive rate and recall on each
    reference family (``copying_study.descriptors.calibration``); every later stage reads its copy threshold here."""
    from copying_study.descriptors.calibration import calibrate, format_table

    p = DedupParams.from_params(params).as_dict()
    descriptor = load_descriptor(p["descriptor"], device=device)
    record = calibrate(descriptor, p["calibration"]["families"], p["calibration"]["n_per_family"])
    logger.info("descriptor calibration: %s, copy threshold %s, targets %s (the per-family table is in "
                "descriptor_calibration; COPYING_STUDY_VERBOSE=1 prints it)", descriptor.name, record["copy_threshold"],
                "met" if record["meets_targets"] else "NOT met")
    logger.debug("descriptor calibration:\n%s", format_table(record))
    if not record["meets_targets"]:
        failed = [f for f, r in record["families"].items() if not r["meets_targets"]]
        logger.warning("descriptor '%s' does not meet the calibration targets on %s at its copy threshold %.3f: "
                       "copy rates on its scale are not trustworthy there", descriptor.name, failed,
                       record["copy_threshold"])
    return record


def find_duplicate_clusters(train_descriptors: Mapping[str, Any], training_set: pd.DataFrame,
                            params: Mapping[str, Any]) -> pd.DataFrame:
    """``duplicate_clusters``: every training image's cluster (threshold graph + connected components), with the
    descriptor and threshold used."""
    p = DedupParams.from_params(params).as_dict()
    ids = [str(i) for i in train_descriptors["image_ids"]]
    if ids != training_set["image_id"].astype(str).tolist():
        raise ValueError("train_descriptors rows do not match training_set (other images or another order): "
                         "recompute the descriptors for this training_set version")
    meta = train_descriptors["meta"]
    clusters = dedup.find_clusters(np.asarray(train_descriptors["embeddings"]), ids, p, meta,
                                   train_descriptors.get("row_info"))
    clusters["descriptor"] = meta["name"]
    clusters["threshold"] = p["threshold"]
    n_multi = int((clusters.drop_duplicates("cluster_id")["cluster_size"] >= 2).sum())
    logger.info("duplicate clusters: %d of >= 2 images at threshold %.3f (%s)", n_multi, p["threshold"], meta["name"])
    return clusters


def summarise_clusters(duplicate_clusters: pd.DataFrame, training_set: pd.DataFrame, params: Mapping[str, Any],
                       seed: int, device: str) -> pd.DataFrame:
    """``cluster_summary``: size, reportability, caption similarity (paper §5.1) and example ids per cluster."""
    p = DedupParams.from_params(params).as_dict()
    summary, _ = dedup.summarise(duplicate_clusters, training_set, p, seed, pick_device(device))
    return summary


def apply_mitigation(training_set: pd.DataFrame, duplicate_clusters: pd.DataFrame, params: Mapping[str, Any],
                     seed: int) -> pd.DataFrame:
    """``finetune_set``: the training set after ``dedup.mitigation`` on the reportable clusters."""
    p = DedupParams.from_params(params).as_dict()
    out = dedup.mitigate(training_set, duplicate_clusters, p, seed)
    logger.info("finetune_set: %d of %d images after mitigation '%s'", len(out), len(training_set), p["mitigation"])
    return out


def plot_cluster_gallery(duplicate_clusters: pd.DataFrame, cluster_summary: pd.DataFrame,
                         training_set: pd.DataFrame, params: Mapping[str, Any]) -> Figure:
    """Gallery of the largest duplicate clusters."""
    p = DedupParams.from_params(params).as_dict()
    images = dict(zip(training_set["image_id"].astype(str), training_set["image"], strict=True))
    title = (f"largest duplicate clusters ({duplicate_clusters['descriptor'].iloc[0]} descriptor, threshold "
             f"{p['threshold']:g})")
    return cluster_gallery(duplicate_clusters, cluster_summary, images, p["gallery"]["n_clusters"],
                           p["gallery"]["n_images"], title)


def plot_cluster_sizes(duplicate_clusters: pd.DataFrame, params: Mapping[str, Any]) -> Figure:
    """Distribution of cluster sizes."""
    p = DedupParams.from_params(params).as_dict()
    title = (f"cluster sizes ({len(duplicate_clusters)} images, {duplicate_clusters['descriptor'].iloc[0]} "
             f"descriptor, threshold {p['threshold']:g})")
    return cluster_size_histogram(duplicate_clusters, p["min_cluster_size"], title)


def dedup_metrics(duplicate_clusters: pd.DataFrame, cluster_summary: pd.DataFrame, training_set: pd.DataFrame,
                  finetune_set: pd.DataFrame, train_descriptors: Mapping[str, Any], params: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """Counts for MLflow (numbers) plus the components used (strings, kept in the JSON only); on data with a
    ``planted_cluster`` column, pair precision / recall / F1 against it."""
    p = DedupParams.from_params(params).as_dict()
    per_cluster = duplicate_clusters.drop_duplicates("cluster_id")
    in_clusters = duplicate_clusters["cluster_size"] >= 2
    sims = cluster_summary["caption_similarity"].dropna()
    metrics: dict[str, Any] = {
        "n_images": len(duplicate_clusters),
        "n_clusters": int((per_cluster["cluster_size"] >= 2).sum()),
        "n_reportable_clusters": int(per_cluster["reportable"].sum()),
        "images_in_clusters": int(in_clusters.sum()),
        "images_in_reportable_clusters": int(duplicate_clusters["reportable"].sum()),
        "largest_cluster": int(duplicate_clusters["cluster_size"].max()),
        "n_edges": int(duplicate_clusters["n_neighbors"].sum() // 2),
        "median_caption_similarity": float(sims.median()) if len(sims) else None,
        "median_caption_similarity_reportable": (
            float(cluster_summary.loc[cluster_summary["reportable"], "caption_similarity"].dropna().median())
            if cluster_summary["reportable"].any() else None),
        "finetune_set_images": len(finetune_set),
        "images_removed": len(training_set) - len(finetune_set),
        "threshold": p["threshold"],
        "min_cluster_size": p["min_cluster_size"],
        "descriptor": train_descriptors["meta"]["name"],
        "descriptor_dim": int(train_descriptors["meta"]["dim"]),
        "search_index": p["search"]["index"],
        "mitigation": p["mitigation"],
        "caption_similarity_method": (cluster_summary["caption_similarity_method"].iloc[0]
                                      if len(cluster_summary) else None),
    }
    if "descriptor_low_quality" in duplicate_clusters.columns:  # PDQ: hashes below min_quality, kept and marked
        low = duplicate_clusters["descriptor_low_quality"].astype(bool)
        metrics["low_quality_images"] = int(low.sum())
        metrics["low_quality_images_in_clusters"] = int((low & in_clusters).sum())
    if "original_caption" in finetune_set.columns:
        metrics["captions_resampled"] = int((finetune_set["caption"] != finetune_set["original_caption"]).sum())
    if "planted_cluster" in training_set.columns:
        truth = dict(zip(training_set["image_id"].astype(str), training_set["planted_cluster"].astype(int), strict=True))
        scores = dedup.pair_scores(duplicate_clusters["cluster_id"].to_numpy(),
                                   np.array([truth[i] for i in duplicate_clusters["image_id"]]))
        metrics.update(scores)
        if scores["true_pairs"]:
            logger.info("planted clusters: pair precision %.3f, recall %.3f", scores["pair_precision"],
                        scores["pair_recall"])
        else:  # pair_recall is 1.0 by convention when nothing is planted: not a measurement
            logger.info("planted clusters: none in the data (pair precision and recall measure nothing here)")
    return metrics
