"""Nodes of the evaluate stage: thin wrappers around :mod:`copying_study.metrics` (replication, fid, clipscore,
plots). Each node validates what it uses and raises ``ValueError`` naming the bad input or parameter."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from copying_study.metrics import clipscore as clip_metrics
from copying_study.metrics import fid as fid_metrics
from copying_study.metrics import plots
from copying_study.metrics import replication as rep
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.images import decode_image
from copying_study.utils.seeding import numpy_rng

logger = logging.getLogger(__name__)

#: every ``evaluate:`` parameter and its default (nested dicts are merged key by key)
DEFAULTS: dict[str, Any] = {
    "generations_path": None,
    "k": 10,
    "thresholds": [0.5],
    "bootstrap": {"n_boot": 1000, "confidence": 0.95},
    "descriptor": {"path": None, "batch_size": None},
    "per_prompt_top": 3,
    "folder": {"caption_column": "text"},
    "fid": {"enabled": True, "inception_path": None, "batch_size": 32, "max_reference": None},
    "clipscore": {"model_path": None, "batch_size": 32, "text_column": "original_prompt"},
    "plots": {"gallery_n": 12, "gallery_columns": 3, "histogram_bins": 40},
}
#: the ``training_record`` (finetune) key listing the images duplicated in finetuning
DUPLICATED_KEY = "duplicated_ids"
GENERATION_COLUMNS = ("gen_id", "file_name", "prompt", "original_prompt", "source_image_id", "image")
TEXT_COLUMNS = ("prompt", "original_prompt")


# -- parameters -------------------------------------------------------------------------------------------------
def settings(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params:evaluate`` merged over :data:`DEFAULTS` and validated (``ValueError`` naming the bad key)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown evaluate parameter(s) {unknown}: allowed are {', '.join(DEFAULTS)}")
    out: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = params.get(key, default)
        if isinstance(default, dict):
            value = dict(value or {})
            bad = sorted(set(value) - set(default))
            if bad:
                raise ValueError(f"unknown evaluate.{key} key(s) {bad}: allowed are {', '.join(default)}")
            value = {**default, **value}
        out[key] = value
    if int(out["k"]) < 1:
        raise ValueError(f"evaluate.k must be >= 1, got {out['k']}")
    thresholds = out["thresholds"]
    if not isinstance(thresholds, (list, tuple)) or not thresholds or \
            not all(isinstance(t, (int, float)) and -1.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"evaluate.thresholds must be a non-empty list of similarities in [-1, 1], got {thresholds}")
    if int(out["bootstrap"]["n_boot"]) < 1:
        raise ValueError(f"evaluate.bootstrap.n_boot must be >= 1, got {out['bootstrap']['n_boot']}")
    if not 0.0 < float(out["bootstrap"]["confidence"]) < 1.0:
        raise ValueError(f"evaluate.bootstrap.confidence must be in (0, 1), got {out['bootstrap']['confidence']}")
    if int(out["per_prompt_top"]) < 1:
        raise ValueError(f"evaluate.per_prompt_top must be >= 1, got {out['per_prompt_top']}")
    if out["clipscore"]["text_column"] not in TEXT_COLUMNS:
        raise ValueError(f"evaluate.clipscore.text_column must be one of {TEXT_COLUMNS}, "
                         f"got {out['clipscore']['text_column']!r}")
    if out["fid"]["max_reference"] is not None and int(out["fid"]["max_reference"]) < 2:
        raise ValueError(f"evaluate.fid.max_reference must be null or >= 2, got {out['fid']['max_reference']}")
    for key in ("gallery_n", "gallery_columns", "histogram_bins"):
        if int(out["plots"][key]) < 1:
            raise ValueError(f"evaluate.plots.{key} must be >= 1, got {out['plots'][key]}")
    return out


# -- inputs -----------------------------------------------------------------------------------------------------
def select_generations(generations: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """The generations to score: the ``generations`` table, or the folder at ``evaluate.generations_path`` when set
    (then the table is ignored, with a WARNING)."""
    p = settings(params)
    if p["generations_path"]:
        logger.warning("evaluate.generations_path is set: scoring the folder %s, not the generations table",
                       p["generations_path"])
        return load_generations_folder(params)
    return checked_generations(generations, "the generations table")


def load_generations_folder(params: Mapping[str, Any]) -> pd.DataFrame:
    """Generations made elsewhere: an imagefolder (images + ``metadata.csv``/``.jsonl`` with ``file_name`` and the
    prompt in ``text``) at ``evaluate.generations_path``. Any item the reader rejects is an error."""
    from copying_study.data.readers import ImageFolderReader, RawItem

    p = settings(params)
    path = p["generations_path"]
    if not path:
        raise ValueError("evaluate.generations_path must name a folder of generated images (imagefolder layout) "
                         "for the evaluate_folder pipeline")
    try:
        reader = ImageFolderReader(path, caption_column=str(p["folder"]["caption_column"]),
                                   extra_caption_columns=[])
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
    for col in ("file_name", "source_image_id"):  # object columns: None stays None (pandas 3 'str' uses NaN)
        out[col] = pd.Series([None if _missing(v) else str(v) for v in out[col]], index=out.index, dtype=object)
    return out[list(GENERATION_COLUMNS)]


def finetune_info(training_record: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What evaluate needs from the finetuning record: the duplicated image ids (for the duplicated/not split).

    Unavailable (with a reason) when scoring a folder: the record belongs to the model that made the table."""
    p = settings(params)
    if p["generations_path"]:
        return no_finetune_info(params)
    if not isinstance(training_record, Mapping):
        raise ValueError(f"training_record must be a JSON object, got {type(training_record).__name__}")
    ids = training_record.get(DUPLICATED_KEY)
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"training_record has no list '{DUPLICATED_KEY}' of the images duplicated in finetuning "
                         f"(keys: {sorted(training_record)[:20]})")
    return {"available": True, "duplicated_ids": sorted(str(i) for i in ids),
            "duplication": training_record.get("duplication")}


def no_finetune_info(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stand-in for generations made elsewhere: no finetuning record, so its splits are skipped."""
    settings(params)
    return {"available": False, "duplicated_ids": [],
            "reason": "generations from a folder (evaluate.generations_path): no finetuning record, so the "
                      "duplicated / not-duplicated split is skipped"}


# -- descriptors and matches ------------------------------------------------------------------------------------
def describe_generations(
    generations: pd.DataFrame, train_descriptors: Mapping[str, Any], params: Mapping[str, Any], device: str
) -> dict[str, Any]:
    """Copy descriptors of the generations, with the descriptor recorded in ``train_descriptors`` (rebuilt and
    checked by ``descriptor_from_meta``: another name, dim, preprocessing or weights is an error)."""
    from copying_study.descriptors import descriptor_from_meta

    p = settings(params)
    meta = _train_meta(train_descriptors)
    descriptor = descriptor_from_meta(meta, p["descriptor"], device=device)
    images = decoded(generations, "gen_id", "generation")
    embeddings = descriptor.encode(images, desc="generation descriptors")
    return {"embeddings": embeddings, "image_ids": generations["gen_id"].tolist(), "meta": descriptor.meta()}


def match_generations(
    generations: pd.DataFrame,
    generation_descriptors: Mapping[str, Any],
    train_descriptors: Mapping[str, Any],
    finetune: Mapping[str, Any],
    params: Mapping[str, Any],
) -> pd.DataFrame:
    """``replication_scores``: each generation's top-k training matches (faiss inner product) and its top-1."""
    from copying_study.descriptors import check_same_descriptor

    p = settings(params)
    train_meta = _train_meta(train_descriptors)
    check_same_descriptor(generation_descriptors["meta"], train_meta, "generation descriptors", "train_descriptors")
    if list(generation_descriptors["image_ids"]) != generations["gen_id"].tolist():
        raise ValueError("generation_descriptors rows do not match the generations (different gen_ids/order)")
    scores, ids = rep.top_matches(np.asarray(generation_descriptors["embeddings"]),
                                  np.asarray(train_descriptors["embeddings"]), train_descriptors["image_ids"],
                                  int(p["k"]))
    dup = set(finetune.get("duplicated_ids") or [])
    known = bool(finetune.get("available"))
    out = generations.drop(columns=["image"]).copy()
    out["top1_similarity"] = scores[:, 0].astype(np.float64)
    out["match_image_id"] = [row[0] for row in ids]
    out["topk_ids"] = ids
    out["topk_scores"] = [row.astype(np.float64).tolist() for row in scores]
    out["source_duplicated"] = pd.Series([None if not known or _missing(s) else s in dup
                                          for s in out["source_image_id"]], index=out.index, dtype=object)
    out["match_duplicated"] = pd.Series([m in dup if known else None for m in out["match_image_id"]],
                                        index=out.index, dtype=object)
    out["descriptor"] = train_meta["name"]
    return out[["gen_id", "file_name", "top1_similarity", "match_image_id", "topk_ids", "topk_scores", "prompt",
                "original_prompt", "source_image_id", "source_duplicated", "match_duplicated", "descriptor"]]


def background_similarity(train_descriptors: Mapping[str, Any]) -> pd.DataFrame:
    """``replication_background``: every training image's most similar OTHER training image (self excluded by
    index, so exact duplicates inside the training set count)."""
    emb = np.asarray(train_descriptors["embeddings"])
    scores, idx = rep.nearest_other(emb)
    ids = np.asarray([str(i) for i in train_descriptors["image_ids"]], dtype=object)
    return pd.DataFrame({"image_id": ids, "nearest_image_id": ids[idx], "similarity": scores.astype(np.float64)})


def prompt_scores(replication_scores: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """``replication_per_prompt``: MemBench-style per-prompt max and top-3 mean of the top-1 similarities (grouped
    by the prompt before any inference-time mitigation, ``original_prompt``)."""
    p = settings(params)
    return rep.per_prompt_scores(replication_scores["original_prompt"].tolist(),
                                 replication_scores["top1_similarity"].to_numpy(), int(p["per_prompt_top"]))


# -- FID and CLIPScore ------------------------------------------------------------------------------------------
def compute_fid(
    generations: pd.DataFrame,
    training_set: pd.DataFrame,
    generation_descriptors: Mapping[str, Any],
    train_descriptors: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int,
    device: str,
) -> dict[str, Any]:
    """FID (generations vs training images) with the standard FID Inception (bundled, or the TorchScript at
    ``evaluate.fid.inception_path``); always also the Fréchet distance in the copy descriptor's feature space,
    named as such (``frechet_distance`` + ``frechet_features``)."""
    p = settings(params)["fid"]
    ref = np.arange(len(training_set))
    if p["max_reference"] is not None and len(ref) > int(p["max_reference"]):
        ref = np.sort(numpy_rng(seed, "evaluate", "fid_reference").choice(len(ref), int(p["max_reference"]),
                                                                         replace=False))
    out: dict[str, Any] = {"fid": None, "fid_info": {}, "frechet_distance": None, "frechet_features": None}
    if not p["enabled"]:
        out["fid_info"] = {"reason": "FID and Fréchet distances disabled (evaluate.fid.enabled: false)"}
        return out
    meta = _train_meta(train_descriptors)
    row_of = {str(i): n for n, i in enumerate(train_descriptors["image_ids"])}
    ref_ids = training_set["image_id"].astype(str).to_numpy()[ref]
    missing = [i for i in ref_ids if i not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} training_set image(s) have no row in train_descriptors (e.g. {missing[:3]}):"
                         " the two come from different runs; load matching versions")
    try:
        out["frechet_distance"] = fid_metrics.frechet_distance_from_features(
            np.asarray(train_descriptors["embeddings"])[[row_of[i] for i in ref_ids]],
            np.asarray(generation_descriptors["embeddings"]))
        out["frechet_features"] = f"copy descriptor '{meta['name']}' ({meta['dim']}-d, L2-normalised) — not FID"
    except ValueError as exc:
        out["frechet_reason"] = str(exc)
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


def compute_clipscore(generations: pd.DataFrame, params: Mapping[str, Any], device: str) -> dict[str, Any]:
    """CLIPScore of each generation with its prompt (``evaluate.clipscore.text_column``) using the CLIP model at
    ``evaluate.clipscore.model_path``; ``clipscore: None`` with the reason when no model is given."""
    p = settings(params)["clipscore"]
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


# -- summary ----------------------------------------------------------------------------------------------------
def summarise(
    replication_scores: pd.DataFrame,
    replication_background: pd.DataFrame,
    replication_per_prompt: pd.DataFrame,
    fid: Mapping[str, Any],
    clipscore: Mapping[str, Any],
    finetune: Mapping[str, Any],
    training_set: pd.DataFrame,
    train_descriptors: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """``replication_summary`` (see docs/evaluate.md for every key) and ``evaluate_metrics`` (its headline numbers,
    flat, for MLflow)."""
    p = settings(params)
    boot = {"n_boot": int(p["bootstrap"]["n_boot"]), "confidence": float(p["bootstrap"]["confidence"])}
    thresholds = [float(t) for t in p["thresholds"]]
    top1 = replication_scores["top1_similarity"].to_numpy()
    gen = rep.summarise_similarities(top1, seed, "generations", thresholds, **boot)
    bg = rep.summarise_similarities(replication_background["similarity"].to_numpy(), seed, "background",
                                    thresholds, **boot)
    _check_same_ids(training_set, train_descriptors)
    summary: dict[str, Any] = {
        "dataset_similarity": gen["dataset_similarity"],
        "dataset_similarity_ci": gen["dataset_similarity_ci"],
        **{k: v for k, v in gen.items() if k not in ("dataset_similarity", "dataset_similarity_ci", "n")},
        "n_generations": gen["n"],
        "descriptor": _train_meta(train_descriptors),
        "definitions": {
            "similarity": "inner product of L2-normalised copy descriptors of a generation and its top-1 training "
                          "match (cosine similarity)",
            "dataset_similarity": "95th percentile of top1_similarity (numpy linear interpolation), the paper's "
                                  "headline number",
            "dataset_similarity_ci": f"percentile bootstrap, {boot['n_boot']} resamples, "
                                     f"{boot['confidence']:.0%} interval, seed derived from params:seed",
            "fraction_above": "share of generations with top1_similarity strictly greater than the threshold",
            "background": "each training image against its nearest OTHER training image (self excluded by index)",
        },
        "k": int(p["k"]),
        "background": {**bg, "n_training": int(len(replication_background))},
        "per_prompt": rep.per_prompt_summary(replication_per_prompt, int(p["per_prompt_top"]), thresholds),
        "splits": {
            "source_duplicated": _duplicated_split(replication_scores, finetune, thresholds),
            "planted_cluster": _planted_split(replication_scores, training_set, thresholds),
        },
        **{k: v for k, v in fid.items()},
        **{k: v for k, v in clipscore.items()},
        "inputs": {"generations": "folder" if p["generations_path"] else "generations table",
                   "generations_path": p["generations_path"],
                   "finetuning_record": bool(finetune.get("available"))},
    }
    return summary, headline_metrics(summary, thresholds)


def headline_metrics(summary: Mapping[str, Any], thresholds: Sequence[float]) -> dict[str, float]:
    """The summary's headline numbers as a flat dict of floats (None values are left out)."""
    keys = ["dataset_similarity", "mean", "median", "p75", "p90", *(rep.threshold_key(t) for t in thresholds)]
    out: dict[str, Any] = {k: summary[k] for k in keys}
    out["dataset_similarity_ci_low"], out["dataset_similarity_ci_high"] = summary["dataset_similarity_ci"]
    out["n_generations"] = summary["n_generations"]
    for k in keys:
        out[f"background_{k}"] = summary["background"][k]
    pp = summary["per_prompt"]
    out["per_prompt_max_mean"] = pp["max"]["mean"]
    for k in ("fid", "frechet_distance", "clipscore", "clip_cosine_mean", "clipscore_hessel"):
        out[k] = summary.get(k)
    split = summary["splits"]["source_duplicated"]
    for group in ("duplicated", "not_duplicated"):
        if group in split:
            out[f"{group}_dataset_similarity"] = split[group]["dataset_similarity"]
    planted = summary["splits"]["planted_cluster"]
    for group in ("planted", "not_planted"):
        if group in planted:
            out[f"{group}_dataset_similarity"] = planted[group]["dataset_similarity"]
    return {k: float(v) for k, v in out.items() if v is not None}


def _duplicated_split(scores: pd.DataFrame, finetune: Mapping[str, Any], thresholds: list[float]) -> dict[str, Any]:
    if not finetune.get("available"):
        return {"skipped": finetune.get("reason", "no finetuning record")}
    return rep.duplicated_split(scores["top1_similarity"].to_numpy(), scores["source_duplicated"].tolist(),
                                thresholds)


def _planted_split(scores: pd.DataFrame, training_set: pd.DataFrame, thresholds: list[float]) -> dict[str, Any]:
    if "planted_cluster" not in training_set.columns:
        return {"skipped": "training_set has no planted_cluster column (only the embedded study set has one)"}
    cluster_of = dict(zip(training_set["image_id"].astype(str), training_set["planted_cluster"].astype(int), strict=True))
    if scores["source_image_id"].isna().all():
        return {"skipped": "no generation has a source image (prompts not taken from training captions)"}
    return rep.planted_cluster_split(scores["top1_similarity"].to_numpy(),
                                     rep.lookup(scores["source_image_id"].tolist(), cluster_of), thresholds)


# -- plots ------------------------------------------------------------------------------------------------------
def plot_histogram(
    replication_scores: pd.DataFrame, replication_background: pd.DataFrame, params: Mapping[str, Any]
) -> Figure:
    """Top-1 similarity of the generations against the training background (density histograms)."""
    p = settings(params)
    name = str(replication_scores["descriptor"].iloc[0]) if "descriptor" in replication_scores else "descriptor"
    return plots.similarity_histogram(
        {"generations → nearest training image": replication_scores["top1_similarity"].to_numpy(),
         "training → nearest other training image": replication_background["similarity"].to_numpy()},
        thresholds=p["thresholds"], bins=int(p["plots"]["histogram_bins"]),
        title=f"Replication: top-1 similarity ({name} descriptor)")


def plot_gallery(
    replication_scores: pd.DataFrame, generations: pd.DataFrame, training_set: pd.DataFrame,
    params: Mapping[str, Any]
) -> Figure:
    """The ``evaluate.plots.gallery_n`` most similar generations, each beside its top-1 training match and score."""
    p = settings(params)["plots"]
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
        caption = f"{row.top1_similarity:.3f}\n{prompt[:25] + '…' if len(prompt) > 26 else prompt}"
        pairs.append((_decode_one(gen_images[row.gen_id], row.gen_id, "generation"),
                      _decode_one(train_images[row.match_image_id], row.match_image_id, "training image"),
                      caption))
    return plots.pair_gallery(pairs, columns=int(p["gallery_columns"]),
                              title="Most similar generations (left) and their top-1 training match (right)")


# -- helpers ----------------------------------------------------------------------------------------------------
def decoded(frame: pd.DataFrame, id_column: str, what: str) -> list[Image.Image]:
    """All images of ``frame['image']`` decoded; a corrupt one raises ``ValueError`` naming its id."""
    return list(iter_decoded(frame, id_column, what))


def iter_decoded(frame: pd.DataFrame, id_column: str, what: str) -> Iterator[Image.Image]:
    """The images of ``frame['image']`` decoded one at a time (corrupt → ``ValueError`` naming the id)."""
    for ident, data in zip(frame[id_column], frame["image"], strict=True):
        yield _decode_one(data, ident, what)


def _decode_one(data: Any, ident: Any, what: str) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} {ident}: image is {type(data).__name__}, expected encoded bytes")
    try:
        return decode_image(bytes(data))
    except ValueError as exc:
        raise ValueError(f"{what} {ident}: {exc}") from exc


def _train_meta(train_descriptors: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(train_descriptors.get("meta") or {})
    if "name" not in meta or "dim" not in meta:
        raise ValueError("train_descriptors has no descriptor meta (name, dim): was it written by dedup_clusters?")
    emb = np.asarray(train_descriptors["embeddings"])
    if emb.ndim != 2 or emb.shape[1] != int(meta["dim"]):
        raise ValueError(f"train_descriptors embeddings are {emb.shape} but the meta says {meta['dim']}-d")
    return meta


def _check_same_ids(training_set: pd.DataFrame, train_descriptors: Mapping[str, Any]) -> None:
    a = set(training_set["image_id"].astype(str))
    b = {str(i) for i in train_descriptors["image_ids"]}
    if a != b:
        raise ValueError(f"train_descriptors ({len(b)} ids) do not describe this training_set ({len(a)} ids; "
                         f"{len(a ^ b)} differ): load versions from the same run")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
