"""The evaluate stage without Kedro: its parameters, inputs, copy decisions, background, controls, FID policy and
summary. ``copying_study.pipelines.evaluate.nodes`` only wires these functions to the catalog.

The measurement (docs/evaluate.md):

* every generation's **top-1 similarity** to the training set, with the copy descriptor recorded in
  ``train_descriptors`` (the paper's measure);
* the **copy threshold** of that descriptor from ``descriptor_calibration`` (SSCD: the paper's 0.5; the whitened
  default descriptor: the calibrated value, see docs/dedup.md), so the **copy rate** (generations at or above the
  copy threshold) means the same on every descriptor; the paper's ``fraction_above_0_5`` stays beside it;
* the **background**: each training image against its nearest other training image, raw (exact duplicates inside
  the training set included, as the paper's code does) and *distinct* (images of the same known duplicate cluster —
  planted, or found by dedup_clusters — excluded: "nearest distinct image");
* two **controls** in every run: a *negative* control (``control_set``: images of the training distribution that
  were never trained on) whose copy rate must be near 0, and a *positive* control (copy-transformed training
  images) whose copy rate must be near 1. A run whose controls fail says so in its summary and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from copying_study.metrics import replication as rep
from copying_study.metrics.detection import detection_quality, prompt_table
from copying_study.schemas import EvaluateParams
from copying_study.utils.images import decode_image
from copying_study.utils.seeding import derive_seed, numpy_rng

logger = logging.getLogger(__name__)

#: every ``evaluate:`` parameter and its default (nested dicts are merged key by key)
#: the ``training_record`` (finetune) key listing the images duplicated in finetuning
DUPLICATED_KEY = "duplicated_ids"
GENERATION_COLUMNS = ("gen_id", "file_name", "prompt", "original_prompt", "source_image_id", "detect_first",
                      "detect_mean", "image")
SCORE_COLUMNS = ("gen_id", "file_name", "top1_similarity", "copy", "match_image_id", "topk_ids", "topk_scores",
                 "prompt", "original_prompt", "source_image_id", "source_duplicated", "match_duplicated",
                 "detect_first", "detect_mean", "descriptor")
CONTROL_COLUMNS = ("control", "image_id", "source_image_id", "transform", "top1_similarity", "copy",
                   "match_image_id", "match_is_source")

DEFINITIONS = {
    "similarity": "inner product of L2-normalised copy descriptors of a generation and its top-1 training match "
                  "(cosine similarity)",
    "copy_threshold": "the descriptor's copy threshold from descriptor_calibration (or evaluate.copy_threshold)",
    "copy_rate": "share of generations whose top-1 similarity is at or above the copy threshold",
    "dataset_similarity": "95th percentile of top1_similarity (numpy linear interpolation), the paper's headline "
                          "number",
    "fraction_above": "share of generations with top1_similarity strictly greater than the threshold (the paper's "
                      "0.5 is SSCD's copy threshold)",
    "background": "each training image against its nearest OTHER training image (self excluded by index; exact "
                  "duplicates inside the training set count)",
    "background_distinct": "each training image against its nearest DISTINCT training image: images of the same "
                           "known duplicate cluster (planted, or found by dedup_clusters) excluded",
    "negative_control": "images of the training distribution never trained on (control_set) scored against the "
                        "training set: their copy rate must be near 0",
    "positive_control": "copy-transformed training images (resize, JPEG, crop, colour, text, combinations) scored "
                        "against the training set: their copy rate must be near 1",
}


# -- parameters -------------------------------------------------------------------------------------------------
# -- inputs -----------------------------------------------------------------------------------------------------
def checked_generations(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The columns evaluate uses (``GENERATION_COLUMNS``), after checking there are rows, ids are unique and
    prompts present. Missing optional columns become ``None`` (``original_prompt`` defaults to ``prompt``)."""
    if frame is None or len(frame) == 0:
        raise ValueError(f"no generations to evaluate: {where} is empty")
    missing = [c for c in ("gen_id", "image", "prompt") if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing} (has {list(frame.columns)})")
    out = frame.reset_index(drop=True).copy()
    out["gen_id"] = out["gen_id"].astype(str)
    dup = out["gen_id"][out["gen_id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{where} has duplicate gen_id values, e.g. {dup[:5]}")
    for col in ("file_name", "source_image_id"):
        if col not in out.columns:
            out[col] = None
    if "original_prompt" not in out.columns:
        out["original_prompt"] = out["prompt"]
    for col in ("detect_first", "detect_mean"):  # Wen et al.'s scores: generate records them, other sources do not
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64) if col in out.columns else np.nan
    for col in ("file_name", "source_image_id"):  # object columns: None stays None (pandas 3 'str' uses NaN)
        out[col] = pd.Series([None if missing_value(v) else str(v) for v in out[col]], index=out.index, dtype=object)
    return out[list(GENERATION_COLUMNS)]


def generations_from_folder(path: str, caption_column: str) -> pd.DataFrame:
    """Generations made elsewhere: an imagefolder (images + ``metadata.csv``/``.jsonl`` with ``file_name`` and the
    prompt in ``caption_column``). Any item the reader rejects is an error."""
    from copying_study.data.readers import ImageFolderReader, RawItem

    try:
        reader = ImageFolderReader(path, caption_column=str(caption_column), extra_caption_columns=[])
    except ValueError as exc:
        raise ValueError(f"evaluate.generations_path: {exc}") from exc
    rows, rejects = [], []
    for item in reader:
        if isinstance(item, RawItem):
            rows.append({"gen_id": item.key, "file_name": item.file_name, "prompt": item.captions[0],
                         "original_prompt": item.captions[0], "source_image_id": None, "image": item.data})
        else:
            rejects.append(f"{item.file_name}: {item.reason} {item.detail}".strip())
    if rejects:
        raise ValueError(f"evaluate.generations_path {path}: {len(rejects)} item(s) cannot be scored, e.g. "
                         + "; ".join(rejects[:5]))
    return checked_generations(pd.DataFrame(rows, columns=list(GENERATION_COLUMNS)), f"the folder {path}")


def finetune_info(training_record: Mapping[str, Any]) -> dict[str, Any]:
    """What evaluate needs from the finetuning record: the duplicated image ids (for the duplicated/not split)."""
    if not isinstance(training_record, Mapping):
        raise ValueError(f"training_record must be a JSON object, got {type(training_record).__name__}")
    ids = training_record.get(DUPLICATED_KEY)
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"training_record has no list '{DUPLICATED_KEY}' of the images duplicated in finetuning "
                         f"(keys: {sorted(training_record)[:20]})")
    return {"available": True, "duplicated_ids": sorted(str(i) for i in ids),
            "duplication": training_record.get("duplication")}


def no_finetune_info(reason: str) -> dict[str, Any]:
    """The stand-in for generations made elsewhere: no finetuning record, so its splits are skipped."""
    return {"available": False, "duplicated_ids": [], "reason": reason}


def train_meta(train_descriptors: Mapping[str, Any]) -> dict[str, Any]:
    """The descriptor meta of ``train_descriptors`` after checking it matches the embeddings."""
    meta = dict(train_descriptors.get("meta") or {})
    if "name" not in meta or "dim" not in meta:
        raise ValueError("train_descriptors has no descriptor meta (name, dim): was it written by dedup_clusters?")
    emb = np.asarray(train_descriptors["embeddings"])
    if emb.ndim != 2 or emb.shape[1] != int(meta["dim"]):
        raise ValueError(f"train_descriptors embeddings are {emb.shape} but the meta says {meta['dim']}-d")
    return meta


def check_same_ids(training_set: pd.DataFrame, train_descriptors: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``train_descriptors`` describe exactly the images of ``training_set``."""
    a = set(training_set["image_id"].astype(str))
    b = {str(i) for i in train_descriptors["image_ids"]}
    if a != b:
        raise ValueError(f"train_descriptors ({len(b)} ids) do not describe this training_set ({len(a)} ids; "
                         f"{len(a ^ b)} differ): load versions from the same run")


# -- the copy scale ---------------------------------------------------------------------------------------------
def copy_scale(calibration: Mapping[str, Any], meta: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The copy threshold this evaluation uses and what stands behind it: the calibrated one (checked to belong to
    the descriptor of ``meta``), or ``evaluate.copy_threshold`` when set (recorded as a user choice, with the
    calibration's figures at that value unknown)."""
    from copying_study.descriptors.calibration import check_calibration

    p = EvaluateParams.from_params(params).as_dict()
    cal = check_calibration(calibration, meta)
    families = {
        f: {"false_positive_rate": r["false_positive_rate"], "recall": r["recall"],
            "meets_targets": r["meets_targets"], "n_negative_pairs": r["n_negative_pairs"],
            "n_positive_pairs": r["n_positive_pairs"]}
        for f, r in cal["families"].items()
    }
    out = {"descriptor": meta["name"], "dim": int(meta["dim"]),
           "whitened": bool((meta.get("config") or {}).get("whitening")),
           "calibrated_threshold": float(cal["copy_threshold"]), "threshold_rule": cal["threshold_rule"],
           "calibration": families, "calibration_meets_targets": bool(cal["meets_targets"]),
           "targets": cal["targets"]}
    if p["copy_threshold"] is None:
        out.update(threshold=float(cal["copy_threshold"]), source="descriptor_calibration")
    else:
        out.update(threshold=float(p["copy_threshold"]), source="evaluate.copy_threshold (set by the user; the "
                   "calibration figures are for the calibrated threshold, not this one)")
    return out


# -- matches ----------------------------------------------------------------------------------------------------
def match_table(generations: pd.DataFrame, generation_embeddings: np.ndarray, train_descriptors: Mapping[str, Any],
                finetune: Mapping[str, Any], k: int, threshold: float) -> pd.DataFrame:
    """``replication_scores``: each generation's top-k training matches (faiss inner product), its top-1 and whether
    it is a copy (top-1 >= ``threshold``)."""
    meta = train_meta(train_descriptors)
    scores, ids = rep.top_matches(np.asarray(generation_embeddings), np.asarray(train_descriptors["embeddings"]),
                                  train_descriptors["image_ids"], int(k))
    dup = set(finetune.get("duplicated_ids") or [])
    known = bool(finetune.get("available"))
    out = generations.drop(columns=["image"]).copy()
    out["top1_similarity"] = scores[:, 0].astype(np.float64)
    out["copy"] = out["top1_similarity"] >= float(threshold)
    out["match_image_id"] = [row[0] for row in ids]
    out["topk_ids"] = ids
    out["topk_scores"] = [row.astype(np.float64).tolist() for row in scores]
    out["source_duplicated"] = pd.Series([None if not known or missing_value(s) else s in dup
                                          for s in out["source_image_id"]], index=out.index, dtype=object)
    out["match_duplicated"] = pd.Series([m in dup if known else None for m in out["match_image_id"]],
                                        index=out.index, dtype=object)
    out["descriptor"] = meta["name"]
    return out[list(SCORE_COLUMNS)]


# -- background ---------------------------------------------------------------------------------------------------
def known_duplicate_groups(training_set: pd.DataFrame, duplicate_clusters: pd.DataFrame | None) -> dict[str, str]:
    """``{image_id: group}`` for every training image in a known duplicate cluster of >= 2 images: the planted
    clusters of the embedded set (``planted_cluster`` >= 0) and the clusters dedup_clusters found. Overlapping
    clusters are merged (union-find), so "same group" is transitive."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def link(members: Sequence[str]) -> None:
        root = find(members[0])
        for m in members[1:]:
            parent[find(m)] = root

    groups: list[list[str]] = []
    if "planted_cluster" in training_set.columns:
        planted = training_set[training_set["planted_cluster"].fillna(-1).astype(int) >= 0]
        groups += [g["image_id"].astype(str).tolist() for _, g in planted.groupby("planted_cluster")]
    if duplicate_clusters is not None and len(duplicate_clusters):
        multi = duplicate_clusters[duplicate_clusters["cluster_size"] >= 2]
        groups += [g["image_id"].astype(str).tolist() for _, g in multi.groupby("cluster_id")]
    for members in groups:
        if len(members) >= 2:
            link(members)
    return {m: find(m) for members in groups for m in members if len(members) >= 2}


def nearest_distinct(embeddings: np.ndarray, ids: Sequence[str], groups: Mapping[str, str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar row that is neither itself nor in its known duplicate group: (scores, indices);
    index -1 and score NaN when every other row is in its group."""
    from copying_study.search import knn

    ids = [str(i) for i in ids]
    n = len(ids)
    label = np.array([groups.get(i, f"__self__{k}") for k, i in enumerate(ids)], dtype=object)
    sizes = pd.Series(label).value_counts()
    k = int(min(n - 1, sizes.max()))
    scores, idx = knn(embeddings, embeddings, k=max(1, k), exclude_self=True)
    scores, idx = np.asarray(scores), np.asarray(idx)
    best_s = np.full(n, np.nan, dtype=np.float64)
    best_i = np.full(n, -1, dtype=np.int64)
    for r in range(n):
        for s, j in zip(scores[r], idx[r], strict=True):
            if j >= 0 and label[j] != label[r]:
                best_s[r], best_i[r] = float(s), int(j)
                break
    return best_s, best_i


def background_table(train_descriptors: Mapping[str, Any], groups: Mapping[str, str]) -> pd.DataFrame:
    """``replication_background``: every training image's nearest OTHER training image (self excluded by index,
    so exact duplicates inside the training set count) and its nearest DISTINCT one (its known duplicate group
    excluded too)."""
    emb = np.asarray(train_descriptors["embeddings"])
    ids = np.asarray([str(i) for i in train_descriptors["image_ids"]], dtype=object)
    scores, idx = rep.nearest_other(emb)
    d_scores, d_idx = nearest_distinct(emb, ids.tolist(), groups)
    return pd.DataFrame({
        "image_id": ids,
        "nearest_image_id": ids[idx],
        "similarity": scores.astype(np.float64),
        "known_duplicate_group": [groups.get(i) for i in ids],
        "nearest_distinct_image_id": [ids[j] if j >= 0 else None for j in d_idx],
        "distinct_similarity": d_scores,
    })


# -- controls -----------------------------------------------------------------------------------------------------
def positive_control_images(training_set: pd.DataFrame, n: int, seed: int
                            ) -> tuple[list[Image.Image], list[str], list[str]]:
    """A seeded sample of ``n`` training images (all when fewer), each after one copy transform: (images, source
    image ids, transform names)."""
    from copying_study.descriptors.reference import copy_transformed

    rows = np.arange(len(training_set))
    if len(rows) > n:
        rows = np.sort(numpy_rng(seed, "evaluate", "positive_control").choice(len(rows), size=n, replace=False))
    chosen = training_set.iloc[rows]
    ids = chosen["image_id"].astype(str).tolist()
    originals = [decode_one(b, i, "training image") for b, i in zip(chosen["image"], ids, strict=True)]
    images, names = copy_transformed(originals, derive_seed(seed, "evaluate"), "positive_control")
    return images, ids, names


def control_rows(kind: str, image_ids: Sequence[str], sources: Sequence[str | None], transforms: Sequence[str | None],
                 embeddings: np.ndarray, train_descriptors: Mapping[str, Any], threshold: float,
                 groups: Mapping[str, str]) -> pd.DataFrame:
    """One control's rows: each image's top-1 training match, whether it is a copy, and (positive control) whether
    the match is its source image or a known duplicate of it."""
    scores, ids = rep.top_matches(np.asarray(embeddings), np.asarray(train_descriptors["embeddings"]),
                                  train_descriptors["image_ids"], 1)
    match = [row[0] for row in ids]

    def same(a: str | None, b: str) -> bool | None:
        if a is None:
            return None
        return a == b or (a in groups and groups.get(a) == groups.get(b))

    return pd.DataFrame({
        "control": kind,
        "image_id": [str(i) for i in image_ids],
        "source_image_id": pd.Series(list(sources), dtype=object),
        "transform": pd.Series(list(transforms), dtype=object),
        "top1_similarity": scores[:, 0].astype(np.float64),
        "copy": scores[:, 0].astype(np.float64) >= float(threshold),
        "match_image_id": match,
        "match_is_source": pd.Series([same(s, m) for s, m in zip(sources, match, strict=True)], dtype=object),
    })[list(CONTROL_COLUMNS)]


def controls_summary(controls: pd.DataFrame, threshold: float, params: Mapping[str, Any], seed: int
                     ) -> dict[str, Any]:
    """Copy rates of the negative and positive controls with bootstrap intervals, and whether each passes its
    criterion (negative <= ``max_negative_copy_rate``, positive >= ``min_positive_copy_rate``). A control with
    fewer than ``min_images`` images is an error naming it."""
    p = EvaluateParams.from_params(params).as_dict()
    c, boot = p["controls"], p["bootstrap"]
    out: dict[str, Any] = {"threshold": float(threshold)}
    failures = []
    for kind, label, where in (("negative", "negative control", "control_set (ingest.control / "
                                "ingest.embedded.n_control)"),
                               ("positive", "positive control", "evaluate.controls.n_positive (training images)")):
        part = controls[controls["control"] == kind]
        if len(part) < int(c["min_images"]):
            raise ValueError(f"the {label} has {len(part)} image(s), fewer than evaluate.controls.min_images="
                             f"{c['min_images']} needed for its copy-rate estimate: enlarge {where}")
        rate, ci = proportion_interval(part["copy"].to_numpy(dtype=bool), seed, f"control_{kind}",
                                       int(boot["n_boot"]), float(boot["confidence"]))
        entry = {"n": int(len(part)), "copy_rate": rate, "copy_rate_ci": ci,
                 "top1_median": float(part["top1_similarity"].median()),
                 "top1_max": float(part["top1_similarity"].max())}
        if kind == "negative":
            entry["criterion"] = f"copy rate <= {float(c['max_negative_copy_rate']):g}"
            entry["passed"] = bool(rate <= float(c["max_negative_copy_rate"]))
        else:
            entry["criterion"] = f"copy rate >= {float(c['min_positive_copy_rate']):g}"
            entry["passed"] = bool(rate >= float(c["min_positive_copy_rate"]))
            matched = part["match_is_source"].dropna()
            entry["match_is_source_rate"] = float(matched.astype(bool).mean()) if len(matched) else None
            entry["copy_rate_by_transform"] = {str(t): float(g["copy"].mean())
                                               for t, g in part.groupby("transform", sort=True)}
        if not entry["passed"]:
            failures.append(f"{label} copy rate {rate:.3f} fails '{entry['criterion']}'")
        out[kind] = entry
    out["passed"] = not failures
    out["status"] = "passed" if not failures else "FAILED"
    out["failures"] = failures
    return out


def proportion_interval(flags: np.ndarray, seed: int, name: str, n_boot: int, confidence: float
                        ) -> tuple[float, list[float]]:
    """The share of true ``flags`` and its percentile-bootstrap interval (``scipy.stats.bootstrap``, seeded)."""
    from scipy.stats import bootstrap

    x = np.asarray(flags, dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"no values for the proportion '{name}'")
    rate = float(x.mean())
    if x.min() == x.max():  # every resample gives the same share
        return rate, [rate, rate]
    res = bootstrap((x,), np.mean, n_resamples=int(n_boot), confidence_level=float(confidence),
                    method="percentile", rng=numpy_rng(seed, "evaluate", "bootstrap", name))
    return rate, [float(res.confidence_interval.low), float(res.confidence_interval.high)]


# -- the PDQ cross-check ------------------------------------------------------------------------------------------
def pdq_cross_check(scores: pd.DataFrame, generations: pd.DataFrame, training_set: pd.DataFrame,
                    params: Mapping[str, Any]) -> dict[str, Any]:
    """Do PDQ's hashes (Meta's perceptual hash; match = Hamming distance <= 31 of 256 bits) agree with the copies the
    main descriptor found? Per generation: whether PDQ matches its main-descriptor top-1 image, and PDQ's own top-1
    over the whole training set. Hashes of quality < 50 (flat images) are unreliable by Meta's guidance and counted.
    PDQ is a second, independent opinion on a different principle (DCT signs of a blurred 64x64 luma), not a second
    calibration: on small or cropped images it misses copies (docs/dedup.md)."""
    from copying_study.descriptors.pdq import MATCH_THRESHOLD, PDQDescriptor, vectors_from_bits
    from copying_study.search import knn

    if not EvaluateParams.from_params(params).pdq_cross_check:
        return {"skipped": "evaluate.pdq_cross_check is false"}
    pdq = PDQDescriptor()
    gen = pdq.hash(decoded(generations, "gen_id", "generation"), desc="pdq: generations")
    train = pdq.hash([decode_one(b, i, "training image") for b, i in
                      zip(training_set["image"], training_set["image_id"], strict=True)], desc="pdq: training set")
    row_of = {str(i): k for k, i in enumerate(training_set["image_id"].astype(str))}
    g_vec, t_vec = vectors_from_bits(gen.bits), vectors_from_bits(train.bits)
    by_id = dict(zip(generations["gen_id"].astype(str), range(len(generations)), strict=True))
    order = [by_id[str(g)] for g in scores["gen_id"]]
    g_vec, g_quality = g_vec[order], gen.quality[order]
    pair = np.einsum("nd,nd->n", g_vec, t_vec[[row_of[str(m)] for m in scores["match_image_id"]]])
    pdq_top1, _ = knn(g_vec, t_vec, k=1, base_meta=pdq.meta())
    main = scores["copy"].to_numpy(dtype=bool)
    agrees = pair >= MATCH_THRESHOLD
    own = np.asarray(pdq_top1)[:, 0] >= MATCH_THRESHOLD
    n_main = int(main.sum())
    return {
        "rule": "Hamming distance <= 31 of 256 bits (similarity >= 0.7578125 on the ±1/16 scale)",
        "n_generations": int(len(main)),
        "n_copies_main": n_main,
        "n_copies_confirmed_by_pdq": int((main & agrees).sum()),
        "confirmed_share": float((main & agrees).sum() / n_main) if n_main else None,
        "n_pdq_copies": int(own.sum()),
        "n_pdq_copies_not_found_by_main": int((own & ~main).sum()),
        "agreement": float(((own | agrees) == main).mean()),
        "n_low_quality_generations": int((g_quality < pdq.min_quality).sum()),
        "n_low_quality_training_images": int((train.quality < pdq.min_quality).sum()),
        "pdq_version": pdq.version,
    }


# -- summary ------------------------------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """``replication_summary``: see docs/evaluate.md for every key."""
    p = EvaluateParams.from_params(params).as_dict()
    boot = {"n_boot": int(p["bootstrap"]["n_boot"]), "confidence": float(p["bootstrap"]["confidence"])}
    thresholds = sorted({float(t) for t in p["thresholds"]} | {float(scale["threshold"])})
    t = float(scale["threshold"])
    top1 = replication_scores["top1_similarity"].to_numpy()
    gen = rep.summarise_similarities(top1, seed, "generations", thresholds, **boot)
    copy_rate, copy_ci = proportion_interval(top1 >= t, seed, "copy_rate", **boot)
    bg = rep.summarise_similarities(replication_background["similarity"].to_numpy(), seed, "background",
                                    thresholds, **boot)
    distinct = replication_background["distinct_similarity"].dropna().to_numpy()
    bg_distinct = (rep.summarise_similarities(distinct, seed, "background_distinct", thresholds, **boot)
                   if distinct.size else {"skipped": "every training image is in one known duplicate group"})
    check_same_ids(training_set, train_descriptors)
    controls = controls_summary(replication_controls, t, params, seed)
    summary: dict[str, Any] = {
        "descriptor": train_meta(train_descriptors),
        "copy_scale": dict(scale),
        "copy_threshold": t,
        "copy_rate": copy_rate,
        "copy_rate_ci": copy_ci,
        "n_copies": int((top1 >= t).sum()),
        "dataset_similarity": gen["dataset_similarity"],
        "dataset_similarity_ci": gen["dataset_similarity_ci"],
        **{k: v for k, v in gen.items() if k not in ("dataset_similarity", "dataset_similarity_ci", "n")},
        "n_generations": gen["n"],
        "definitions": {**DEFINITIONS,
                        "dataset_similarity_ci": f"percentile bootstrap, {boot['n_boot']} resamples, "
                                                 f"{boot['confidence']:.0%} interval, seed derived from params:seed"},
        "k": int(p["k"]),
        "background": {**bg, "n_training": int(len(replication_background))},
        "background_distinct": {**bg_distinct,
                                "n_in_known_duplicate_groups": int(
                                    replication_background["known_duplicate_group"].notna().sum())},
        "controls": controls,
        "pdq_cross_check": dict(pdq) if pdq is not None else {"skipped": "not computed"},
        "detection": detection_quality(prompt_table(replication_scores), derive_seed(seed, "evaluate", "detection"),
                                       **boot),
        "per_prompt": rep.per_prompt_summary(replication_per_prompt, int(p["per_prompt_top"]), thresholds),
        "splits": {
            "source_duplicated": duplicated_split(replication_scores, finetune, thresholds, t),
            "planted_cluster": planted_split(replication_scores, training_set, thresholds),
        },
        **dict(fid),
        **dict(clipscore),
        "inputs": {"generations": "folder" if p["generations_path"] else "generations table",
                   "generations_path": p["generations_path"],
                   "finetuning_record": bool(finetune.get("available"))},
    }
    return summary


def headline_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's headline numbers as a flat dict of floats for MLflow (None values are left out)."""
    fraction_keys = [k for k in summary if k.startswith("fraction_above_")]
    keys = ["copy_threshold", "copy_rate", "dataset_similarity", "mean", "median", "p75", "p90", *fraction_keys]
    out: dict[str, Any] = {k: summary.get(k) for k in keys}
    out["copy_rate_ci_low"], out["copy_rate_ci_high"] = summary["copy_rate_ci"]
    out["dataset_similarity_ci_low"], out["dataset_similarity_ci_high"] = summary["dataset_similarity_ci"]
    out["n_generations"] = summary["n_generations"]
    for k in ["dataset_similarity", "mean", "median", "p75", "p90", *fraction_keys]:
        out[f"background_{k}"] = summary["background"].get(k)
        out[f"background_distinct_{k}"] = summary["background_distinct"].get(k)
    controls = summary["controls"]
    out["controls_passed"] = 1.0 if controls["passed"] else 0.0
    for kind in ("negative", "positive"):
        out[f"{kind}_control_copy_rate"] = controls[kind]["copy_rate"]
    for family, r in summary["copy_scale"]["calibration"].items():
        out[f"calibration_{family}_false_positive_rate"] = r["false_positive_rate"]
        out[f"calibration_{family}_recall"] = r["recall"]
    pp = summary["per_prompt"]
    out["per_prompt_max_mean"] = pp["max"]["mean"]
    for score, d in (summary.get("detection") or {}).items():
        if isinstance(d, dict) and "auc" in d:
            out[f"detection_{score}_auc"] = d["auc"]
            out[f"detection_{score}_tpr_at_1pct_fpr"] = d["tpr_at_1pct_fpr"]
    pdq = summary.get("pdq_cross_check") or {}
    out["pdq_confirmed_share"] = pdq.get("confirmed_share")
    out["pdq_agreement"] = pdq.get("agreement")
    for k in ("fid", "frechet_distance", "clipscore", "clip_cosine_mean", "clipscore_hessel"):
        out[k] = summary.get(k)
    split = summary["splits"]["source_duplicated"]
    for group in ("duplicated", "not_duplicated"):
        if group in split:
            out[f"{group}_dataset_similarity"] = split[group]["dataset_similarity"]
            out[f"{group}_copy_rate"] = split[group].get("copy_rate")
    planted = summary["splits"]["planted_cluster"]
    for group in ("planted", "not_planted"):
        if group in planted:
            out[f"{group}_dataset_similarity"] = planted[group]["dataset_similarity"]
    return {k: float(v) for k, v in out.items() if v is not None and not isinstance(v, (dict, list))}


def duplicated_split(scores: pd.DataFrame, finetune: Mapping[str, Any], thresholds: list[float],
                     copy_threshold: float) -> dict[str, Any]:
    """:func:`replication.duplicated_split` plus each group's copy rate (top-1 at or above ``copy_threshold``)."""
    if not finetune.get("available"):
        return {"skipped": finetune.get("reason", "no finetuning record")}
    out = rep.duplicated_split(scores["top1_similarity"].to_numpy(), scores["source_duplicated"].tolist(),
                               thresholds)
    flags = scores["source_duplicated"]
    for group, want in (("duplicated", True), ("not_duplicated", False)):
        if group in out:
            mask = np.array([f is not None and not missing_value(f) and bool(f) == want for f in flags])
            out[group]["copy_rate"] = float((scores["top1_similarity"].to_numpy()[mask] >= copy_threshold).mean())
            out[group]["n_prompts"] = int(scores.loc[mask, "original_prompt"].nunique())
    return out


def planted_split(scores: pd.DataFrame, training_set: pd.DataFrame, thresholds: list[float]) -> dict[str, Any]:
    """:func:`replication.planted_cluster_split` by the source image's planted cluster (embedded data only)."""
    if "planted_cluster" not in training_set.columns:
        return {"skipped": "training_set has no planted_cluster column (only the embedded study set has one)"}
    cluster_of = dict(zip(training_set["image_id"].astype(str), training_set["planted_cluster"].astype(int),
                          strict=True))
    if scores["source_image_id"].isna().all():
        return {"skipped": "no generation has a source image (prompts not taken from training captions)"}
    return rep.planted_cluster_split(scores["top1_similarity"].to_numpy(),
                                     rep.lookup(scores["source_image_id"].tolist(), cluster_of), thresholds)


# -- images -------------------------------------------------------------------------------------------------------
def iter_decoded(frame: pd.DataFrame, id_column: str, what: str) -> Iterator[Image.Image]:
    """The images of ``frame['image']`` decoded one at a time (corrupt -> ``ValueError`` naming the id)."""
    for ident, data in zip(frame[id_column], frame["image"], strict=True):
        yield decode_one(data, ident, what)


def decoded(frame: pd.DataFrame, id_column: str, what: str) -> list[Image.Image]:
    """All images of ``frame['image']`` decoded; a corrupt one raises ``ValueError`` naming its id."""
    return list(iter_decoded(frame, id_column, what))


def decode_one(data: Any, ident: Any, what: str) -> Image.Image:
    """One encoded image; ``ValueError`` naming ``what`` and ``ident`` when it is not bytes or cannot be decoded."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} {ident}: image is {type(data).__name__}, expected encoded bytes")
    try:
        return decode_image(bytes(data))
    except ValueError as exc:
        raise ValueError(f"{what} {ident}: {exc}") from exc


def missing_value(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# -- quality: FID and CLIPScore -----------------------------------------------------------------------------------
def fid_report(generations: pd.DataFrame, training_set: pd.DataFrame, generation_embeddings: np.ndarray,
               train_descriptors: Mapping[str, Any], params: Mapping[str, Any], seed: int, device: Any
               ) -> dict[str, Any]:
    """FID (generations vs training images) with the standard FID Inception (bundled, or the TorchScript at
    ``evaluate.fid.inception_path``) unless ``evaluate.fid.enabled`` is false; always the Fréchet distance in the
    copy descriptor's feature space, named as such (``frechet_distance`` + ``frechet_features``)."""
    from copying_study.metrics import fid as fid_metrics
    from copying_study.utils.device import describe_device, pick_device

    p = EvaluateParams.from_params(params).as_dict()["fid"]
    ref = np.arange(len(training_set))
    if p["max_reference"] is not None and len(ref) > int(p["max_reference"]):
        ref = np.sort(numpy_rng(seed, "evaluate", "fid_reference").choice(len(ref), int(p["max_reference"]),
                                                                         replace=False))
    out: dict[str, Any] = {"fid": None, "fid_info": {}, "frechet_distance": None, "frechet_features": None}
    meta = train_meta(train_descriptors)
    row_of = {str(i): n for n, i in enumerate(train_descriptors["image_ids"])}
    ref_ids = training_set["image_id"].astype(str).to_numpy()[ref]
    missing = [i for i in ref_ids if i not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} training_set image(s) have no row in train_descriptors (e.g. {missing[:3]}):"
                         " the two come from different runs; load matching versions")
    try:
        out["frechet_distance"] = fid_metrics.frechet_distance_from_features(
            np.asarray(train_descriptors["embeddings"])[[row_of[i] for i in ref_ids]],
            np.asarray(generation_embeddings))
        out["frechet_features"] = f"copy descriptor '{meta['name']}' ({meta['dim']}-d, L2-normalised) — not FID"
    except ValueError as exc:
        out["frechet_reason"] = str(exc)
    if not p["enabled"]:  # the stand-in above costs nothing (the descriptors exist); the Inception FID does
        out["fid_info"] = {"reason": "FID disabled (evaluate.fid.enabled: false); the Fréchet distance in the copy "
                                     "descriptor's space is reported instead, named as such"}
        return out
    if len(generations) < 2 or len(ref) < 2:
        out["fid_info"] = {"reason": f"FID needs >= 2 images a side; got {len(generations)} generations and "
                                     f"{len(ref)} training images"}
        logger.warning("FID not computed: %s", out["fid_info"]["reason"])
        return out
    dev = pick_device(device)
    inception = fid_metrics.load_inception(p["inception_path"] or None, dev)
    real = training_set.iloc[ref]
    out["fid"] = fid_metrics.frechet_inception_distance(
        iter_decoded(real, "image_id", "training image"), iter_decoded(generations, "gen_id", "generation"),
        inception, batch_size=int(p["batch_size"]), n_real=len(real), n_fake=len(generations))
    out["fid_info"] = {
        "implementation": "torchmetrics.image.fid.FrechetInceptionDistance with the FID Inception TorchScript",
        **inception.record(),
        "reference": "training_set" + (f" (seeded sample of {len(ref)})" if len(ref) < len(training_set) else ""),
        "n_real": int(len(real)),
        "n_fake": int(len(generations)),
        "device": describe_device(dev),
    }
    if len(generations) < 2048 or len(real) < 2048:
        out["fid_info"]["note"] = ("fewer than 2048 images on a side: FID is strongly biased upwards at this size "
                                   "and only comparable between runs of the same sizes")
    return out


def clipscore_report(generations: pd.DataFrame, params: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """CLIPScore of each generation with its prompt (``evaluate.clipscore.text_column``) using the CLIP model at
    ``evaluate.clipscore.model_path``; ``clipscore: None`` with the reason when no model is given."""
    from copying_study.metrics import clipscore as clip_metrics
    from copying_study.utils.device import describe_device, pick_device

    p = EvaluateParams.from_params(params).as_dict()["clipscore"]
    if not p["model_path"]:
        reason = "no CLIP model given (evaluate.clipscore.model_path is null)"
        logger.warning("CLIPScore not computed: %s", reason)
        return {"clipscore": None, "clipscore_info": {"reason": reason}}
    dev = pick_device(device)
    scorer = clip_metrics.ClipScorer(p["model_path"], dev, batch_size=int(p["batch_size"]))
    texts = generations[p["text_column"]].fillna("").astype(str).tolist()
    cos = scorer.cosines(decoded(generations, "gen_id", "generation"), texts)
    out = clip_metrics.clip_score_summary(cos)
    info = {**scorer.describe(), "text_column": p["text_column"], "n": out.pop("n"), "device": describe_device(dev)}
    return {**out, "clipscore_info": info}
