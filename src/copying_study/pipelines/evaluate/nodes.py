"""Nodes of the evaluate stage: wiring only. The logic is in :mod:`copying_study.metrics.evaluation` (parameters,
copy scale, matches, background, controls, FID policy, summary) and :mod:`copying_study.metrics.plots`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from copying_study.metrics import evaluation as ev
from copying_study.metrics import plots
from copying_study.metrics import replication as rep
from copying_study.schemas import EvaluateParams

logger = logging.getLogger(__name__)

# -- inputs -----------------------------------------------------------------------------------------------------
def select_generations(generations: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """The generations to score: the ``generations`` table, or the folder at ``evaluate.generations_path`` when set
    (then the table is ignored, with a WARNING)."""
    p = EvaluateParams.from_params(params).as_dict()
    if p["generations_path"]:
        logger.warning("evaluate.generations_path is set: scoring the folder %s, not the generations table",
                       p["generations_path"])
        return load_generations_folder(params)
    return ev.checked_generations(generations, "the generations table")


def load_generations_folder(params: Mapping[str, Any]) -> pd.DataFrame:
    """The folder at ``evaluate.generations_path`` (imagefolder layout) as a generations table."""
    p = EvaluateParams.from_params(params).as_dict()
    if not p["generations_path"]:
        raise ValueError("evaluate.generations_path must name a folder of generated images (imagefolder layout) "
                         "for the evaluate_folder pipeline")
    return ev.generations_from_folder(p["generations_path"], p["folder"]["caption_column"])


def finetune_info(training_record: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The duplicated image ids of the finetuning record (unavailable, with a reason, when scoring a folder)."""
    if EvaluateParams.from_params(params).as_dict()["generations_path"]:
        return no_finetune_info(params)
    return ev.finetune_info(training_record)


def no_finetune_info(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stand-in for generations made elsewhere: no finetuning record, so its splits are skipped."""
    EvaluateParams.from_params(params).as_dict()
    return ev.no_finetune_info("generations from a folder (evaluate.generations_path): no finetuning record, so "
                               "the duplicated / not-duplicated split is skipped")


def copy_scale(descriptor_calibration: Mapping[str, Any], train_descriptors: Mapping[str, Any],
               params: Mapping[str, Any]) -> dict[str, Any]:
    """``evaluate_copy_scale``: the copy threshold and the calibration behind it."""
    return ev.copy_scale(descriptor_calibration, ev.train_meta(train_descriptors), params)


# -- descriptors and matches ------------------------------------------------------------------------------------
def describe_generations(
    generations: pd.DataFrame, train_descriptors: Mapping[str, Any], params: Mapping[str, Any], device: str
) -> dict[str, Any]:
    """Copy descriptors of the generations, with the descriptor recorded in ``train_descriptors`` (rebuilt and
    checked by ``descriptor_from_meta``: another name, dim, preprocessing, weights or whitening is an error)."""
    from copying_study.descriptors import descriptor_from_meta

    descriptor = descriptor_from_meta(ev.train_meta(train_descriptors), EvaluateParams.from_params(params).as_dict()["descriptor"],
                                      device=device)
    embeddings = descriptor.encode(ev.decoded(generations, "gen_id", "generation"), desc="generation descriptors")
    return {"embeddings": embeddings, "image_ids": generations["gen_id"].tolist(), "meta": descriptor.meta()}


def match_generations(
    generations: pd.DataFrame,
    generation_descriptors: Mapping[str, Any],
    train_descriptors: Mapping[str, Any],
    finetune: Mapping[str, Any],
    scale: Mapping[str, Any],
    params: Mapping[str, Any],
) -> pd.DataFrame:
    """``replication_scores``: each generation's top-k training matches, its top-1 and whether it is a copy."""
    from copying_study.descriptors import check_same_descriptor

    check_same_descriptor(generation_descriptors["meta"], ev.train_meta(train_descriptors), "generation descriptors",
                          "train_descriptors")
    if list(generation_descriptors["image_ids"]) != generations["gen_id"].tolist():
        raise ValueError("generation_descriptors rows do not match the generations (different gen_ids/order)")
    return ev.match_table(generations, generation_descriptors["embeddings"], train_descriptors, finetune,
                          EvaluateParams.from_params(params).as_dict()["k"], scale["threshold"])


def background_similarity(train_descriptors: Mapping[str, Any], training_set: pd.DataFrame,
                          duplicate_clusters: pd.DataFrame) -> pd.DataFrame:
    """``replication_background``: each training image's nearest other and nearest distinct training image."""
    return ev.background_table(train_descriptors, ev.known_duplicate_groups(training_set, duplicate_clusters))


def score_controls(control_set: pd.DataFrame, training_set: pd.DataFrame, train_descriptors: Mapping[str, Any],
                   duplicate_clusters: pd.DataFrame, scale: Mapping[str, Any], params: Mapping[str, Any],
                   seed: int, device: str) -> pd.DataFrame:
    """``replication_controls``: the negative control (``control_set``, never trained on) and the positive control
    (copy-transformed training images), each image's top-1 training match and copy decision."""
    from copying_study.descriptors import descriptor_from_meta

    p = EvaluateParams.from_params(params).as_dict()
    descriptor = descriptor_from_meta(ev.train_meta(train_descriptors), p["descriptor"], device=device)
    groups = ev.known_duplicate_groups(training_set, duplicate_clusters)
    frames = []
    if control_set is not None and len(control_set):
        ids = control_set["image_id"].astype(str).tolist()
        emb = descriptor.encode(ev.decoded(control_set, "image_id", "control image"), desc="negative control")
        frames.append(ev.control_rows("negative", ids, [None] * len(ids), [None] * len(ids), emb,
                                      train_descriptors, scale["threshold"], groups))
    images, sources, names = ev.positive_control_images(training_set, int(p["controls"]["n_positive"]), seed)
    emb = descriptor.encode(images, desc="positive control")
    frames.append(ev.control_rows("positive", [f"{s}#{n}" for s, n in zip(sources, names, strict=True)], sources,
                                  names, emb, train_descriptors, scale["threshold"], groups))
    return pd.concat(frames, ignore_index=True)


def prompt_scores(replication_scores: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """``replication_per_prompt``: MemBench-style per-prompt max and top-3 mean of the top-1 similarities (grouped
    by the prompt before any inference-time mitigation, ``original_prompt``)."""
    p = EvaluateParams.from_params(params).as_dict()
    return rep.per_prompt_scores(replication_scores["original_prompt"].tolist(),
                                 replication_scores["top1_similarity"].to_numpy(), int(p["per_prompt_top"]))


def pdq_cross_check(replication_scores: pd.DataFrame, generations: pd.DataFrame, training_set: pd.DataFrame,
                    params: Mapping[str, Any]) -> dict[str, Any]:
    """``evaluate_pdq``: whether PDQ hashes agree with the main descriptor's copies."""
    return ev.pdq_cross_check(replication_scores, generations, training_set, params)


# -- FID and CLIPScore ------------------------------------------------------------------------------------------
def compute_fid(generations: pd.DataFrame, training_set: pd.DataFrame, generation_descriptors: Mapping[str, Any],
                train_descriptors: Mapping[str, Any], params: Mapping[str, Any], seed: int, device: str
                ) -> dict[str, Any]:
    """FID, or its named stand-in (``metrics.evaluation.fid_report``)."""
    return ev.fid_report(generations, training_set, generation_descriptors["embeddings"], train_descriptors, params,
                         seed, device)


def compute_clipscore(generations: pd.DataFrame, params: Mapping[str, Any], device: str) -> dict[str, Any]:
    """CLIPScore, or ``None`` with the reason (``metrics.evaluation.clipscore_report``)."""
    return ev.clipscore_report(generations, params, device)


# -- summary ----------------------------------------------------------------------------------------------------
def summarise(
    replication_scores: pd.DataFrame,
    replication_background: pd.DataFrame,
    replication_per_prompt: pd.DataFrame,
    replication_controls: pd.DataFrame,
    scale: Mapping[str, Any],
    fid: Mapping[str, Any],
    clipscore: Mapping[str, Any],
    finetune: Mapping[str, Any],
    training_set: pd.DataFrame,
    train_descriptors: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int,
    pdq: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """``replication_summary`` (docs/evaluate.md) and ``evaluate_metrics`` (its headline numbers, for MLflow)."""
    summary = ev.summarise(replication_scores, replication_background, replication_per_prompt, replication_controls,
                           scale, fid, clipscore, finetune, training_set, train_descriptors, params, seed, pdq)
    if not summary["controls"]["passed"]:
        logger.warning("evaluate controls FAILED: %s", "; ".join(summary["controls"]["failures"]))
    return summary, ev.headline_metrics(summary)


# -- plots ------------------------------------------------------------------------------------------------------
def plot_histogram(replication_scores: pd.DataFrame, replication_background: pd.DataFrame,
                   replication_controls: pd.DataFrame, scale: Mapping[str, Any], params: Mapping[str, Any]) -> Figure:
    """Top-1 similarity of the generations against the training background and the two controls, with the copy
    threshold (density histograms)."""
    p = EvaluateParams.from_params(params).as_dict()
    name = str(replication_scores["descriptor"].iloc[0]) if "descriptor" in replication_scores else "descriptor"
    series = {
        "generations → nearest training image": replication_scores["top1_similarity"].to_numpy(),
        "training → nearest distinct training image": replication_background["distinct_similarity"].dropna()
        .to_numpy(),
    }
    for kind, label in (("negative", "negative control (never trained on)"),
                        ("positive", "positive control (copy-transformed training images)")):
        part = replication_controls[replication_controls["control"] == kind]
        if len(part):
            series[label] = part["top1_similarity"].to_numpy()
    thresholds = sorted({float(t) for t in p["thresholds"]} | {float(scale["threshold"])})
    return plots.similarity_histogram(
        series, thresholds=thresholds, bins=int(p["plots"]["histogram_bins"]),
        title=f"Top-1 similarity ({name} descriptor; copy threshold {float(scale['threshold']):.2f})")


def plot_gallery(replication_scores: pd.DataFrame, generations: pd.DataFrame, training_set: pd.DataFrame,
                 params: Mapping[str, Any]) -> Figure:
    """The ``evaluate.plots.gallery_n`` most similar generations, each beside its top-1 training match and score."""
    p = EvaluateParams.from_params(params).as_dict()["plots"]
    top = replication_scores.sort_values(["top1_similarity", "gen_id"], ascending=[False, True])
    top = top.head(int(p["gallery_n"]))
    gen_images = dict(zip(generations["gen_id"].astype(str), generations["image"], strict=True))
    train_images = dict(zip(training_set["image_id"].astype(str), training_set["image"], strict=True))
    pairs = []
    for row in top.itertuples(index=False):
        if row.match_image_id not in train_images:
            raise ValueError(f"match {row.match_image_id} of generation {row.gen_id} is not in training_set "
                             "(train_descriptors and training_set come from different runs)")
        prompt = str(row.original_prompt)
        mark = " copy" if row.copy else ""
        caption = f"{row.top1_similarity:.3f}{mark}\n{prompt[:25] + '…' if len(prompt) > 26 else prompt}"
        pairs.append((ev.decode_one(gen_images[row.gen_id], row.gen_id, "generation"),
                      ev.decode_one(train_images[row.match_image_id], row.match_image_id, "training image"),
                      caption))
    return plots.pair_gallery(pairs, columns=int(p["gallery_columns"]),
                              title="Most similar generations (left) and their top-1 training match (right)")
