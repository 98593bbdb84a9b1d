"""Duplicate clusters of a training table and the pre-training mitigations (framework-free; no Kedro imports).

* ``describe_images``: the training descriptors, in this process or on Dask (``dedup.distributed``);
* ``cluster_table``: one row per image (``image_id``, ``cluster_id``, ``cluster_size``, ...) from the threshold graph;
* ``summarise``: one row per cluster of two or more images, with the paper's caption similarity;
* ``mitigate``: ``none`` | ``collapse`` | ``resample_captions`` on the reportable clusters;
* ``pair_scores``: pair precision / recall of the clusters against a ground-truth labelling (``planted_cluster``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from copying_study.data.captions import alternatives, captions_of
from copying_study.descriptors import EncodedImages, load_descriptor
from copying_study.metrics.caption_similarity import caption_similarity, load_text_encoder
from copying_study.search import (
    cluster_sizes,
    connected_clusters,
    threshold_pairs,
)
from copying_study.search.sharded import (
    can_shard,
    dask_client,
    n_workers,
    sharded_descriptors,
    sharded_threshold_pairs,
)
from copying_study.utils.seeding import numpy_rng, python_rng

logger = logging.getLogger(__name__)

NO_CAPTIONS = "the data has no captions (a classfolders source without captions_file?)"


def check_table(table: pd.DataFrame, columns: tuple[str, ...], what: str = "training_set") -> None:
    """``ValueError`` when ``table`` is empty, lacks ``columns`` or has repeated ``image_id`` values."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}")
    if len(table) == 0:
        raise ValueError(f"{what} is empty: there is nothing to deduplicate")
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"{what} has repeated image_id values (e.g. '{dup}')")


def describe_images(images: Sequence[bytes], params: Mapping[str, Any], device: str | None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Descriptors of encoded images (``training_set["image"]``) in their order with ``params['descriptor']``:
    ``(embeddings, row_info, meta)`` as ``encode_rows`` and ``meta()`` give them, in this process or as Dask tasks
    over shards (``params['distributed']``); the bytes are the same either way."""
    with dask_client(params["distributed"]) as client:
        if client is None:
            logger.debug("training descriptors: engine single process")
            descriptor = load_descriptor(params["descriptor"], device=device)
            embeddings, row_info = descriptor.encode_rows(EncodedImages(images), desc="training descriptors")
            return embeddings, row_info, descriptor.meta()
        shard = params["distributed_shard_size"]["descriptors"]
        logger.info("training descriptors: engine dask (%d workers, shards of %d images)", n_workers(client), shard)
        return sharded_descriptors(client, images, params["descriptor"], device, shard)


def find_clusters(
    embeddings: np.ndarray, image_ids: list[str], params: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
    row_info: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The threshold graph of ``embeddings`` at ``params['threshold']`` and its connected components, one row per
    image in input order: ``image_id``, ``cluster_id`` (0 = largest cluster; every singleton its own id),
    ``cluster_size``, ``n_neighbors`` (graph degree), ``max_similarity`` (best edge, NaN for singletons),
    ``reportable`` (size >= min_cluster_size), and ``descriptor_<name>`` for each per-row array in ``row_info``
    (PDQ: ``descriptor_quality``, ``descriptor_low_quality``). The graph is searched in this process or as Dask
    tasks (``params['distributed']``); the table is the same either way."""
    i, j, s = threshold_graph(embeddings, params, meta)
    n = len(image_ids)
    labels = connected_clusters(n, i, j)
    sizes = cluster_sizes(labels)
    degree = np.bincount(np.concatenate([i, j]), minlength=n) if i.size else np.zeros(n, np.int64)
    best = np.full(n, -np.inf)
    np.maximum.at(best, i, s)
    np.maximum.at(best, j, s)
    extra = {f"descriptor_{key}": np.asarray(value) for key, value in dict(row_info or {}).items()}
    for key, value in extra.items():
        if value.shape != (n,):
            raise ValueError(f"train_descriptors row_info '{key}' has shape {value.shape}; expected ({n},)")
    return pd.DataFrame({
        "image_id": [str(x) for x in image_ids],
        "cluster_id": labels,
        "cluster_size": sizes,
        "n_neighbors": degree.astype(np.int64),
        "max_similarity": np.where(np.isfinite(best), best, np.nan).astype(np.float64),
        "reportable": sizes >= int(params["min_cluster_size"]),
        **extra,
    })


def threshold_graph(embeddings: np.ndarray, params: Mapping[str, Any], meta: Mapping[str, Any] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` with similarity >= ``params['threshold']`` (``threshold_pairs`` with ``params['search']``, or
    ``sharded_threshold_pairs`` on Dask) and their scores recomputed by :func:`pair_similarities`: which engine,
    chunk or shard found a pair changes its float32 score in the last bit, and this makes the score one value."""
    search = params["search"]
    approx = {"nlist": search["nlist"], "nprobe": search["nprobe"]} if search["index"] == "ivf" else {}
    with dask_client(params["distributed"]) as client:
        if client is not None and not can_shard(search["index"], meta):
            logger.warning("threshold graph: search.index '%s' has no sharded search for this descriptor; it runs "
                           "in this process", search["index"])
            client = None
        if client is None:
            logger.debug("threshold graph: engine single process")
            i, j, _ = threshold_pairs(
                embeddings, params["threshold"], kind=search["index"], meta=meta, k_start=search["k_start"],
                max_neighbors=search["max_neighbors"], chunk_size=search["chunk_size"], backend=search["backend"],
                **approx)
        else:
            shard = params["distributed_shard_size"]["search"]
            logger.info("threshold graph: engine dask (%d workers, shards of %d rows; faiss on the workers' CPUs, "
                        "search.backend '%s' is for the single-process engine)", n_workers(client), shard,
                        search["backend"])
            with tempfile.TemporaryDirectory(prefix="dedup-edges-") as edges_dir:
                i, j, _ = sharded_threshold_pairs(client, embeddings, params["threshold"], meta, shard, edges_dir,
                                                  kind=search["index"], max_neighbors=search["max_neighbors"],
                                                  **approx)
    return i, j, pair_similarities(embeddings, i, j)


def pair_similarities(x: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``x[i]·x[j]`` accumulated in float64 and rounded to float32 (the exact score of the float32 vectors, up to that
    rounding), in chunks of pairs."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(len(i), dtype=np.float32)
    for k in range(0, len(i), chunk):
        a = x[i[k:k + chunk]].astype(np.float64)
        out[k:k + chunk] = np.einsum("pd,pd->p", a, x[j[k:k + chunk]].astype(np.float64))
    return out


def summarise(
    clusters: pd.DataFrame, training_set: pd.DataFrame, params: Mapping[str, Any], seed: int, device: Any = "cpu"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per cluster with two or more images, largest first: ``cluster_id``, ``size``, ``reportable``,
    ``caption_similarity`` (paper §5.1), ``caption_pairs``, ``caption_similarity_method``, ``example_ids``,
    ``n_distinct_captions``. Also returns the text model's meta."""
    caption_of = dict(zip(training_set["image_id"].astype(str), training_set["caption"].fillna("").astype(str),
                          strict=True))
    captioned = any(c.strip() for c in caption_of.values())
    if not captioned:
        logger.warning("caption similarity is skipped: %s", NO_CAPTIONS)
    multi = clusters[clusters["cluster_size"] >= 2]
    encoder = None
    rows = []
    for cid, members in multi.groupby("cluster_id", sort=True):
        captions = [caption_of[i] for i in members["image_id"]]
        if captioned:
            if encoder is None:
                encoder = load_text_encoder(params["caption_model"], list(caption_of.values()), device)
            sim, n_pairs = caption_similarity(captions, encoder, params["max_caption_pairs"],
                                              numpy_rng(seed, "dedup", "caption_pairs", int(cid)))
        else:
            sim, n_pairs = float("nan"), 0
        rows.append({
            "cluster_id": int(cid),
            "size": len(members),
            "reportable": bool(len(members) >= params["min_cluster_size"]),
            "caption_similarity": sim,
            "caption_pairs": n_pairs,
            "caption_similarity_method": encoder.method if encoder is not None else f"skipped: {NO_CAPTIONS}",
            "n_distinct_captions": len(set(captions)),
            "example_ids": list(members["image_id"].iloc[: params["n_example_ids"]]),
        })
    columns = ["cluster_id", "size", "reportable", "caption_similarity", "caption_pairs",
               "caption_similarity_method", "n_distinct_captions", "example_ids"]
    summary = pd.DataFrame(rows, columns=columns)
    summary = summary.astype({"cluster_id": "int64", "size": "int64", "reportable": "bool",
                              "caption_similarity": "float64", "caption_pairs": "int64",
                              "n_distinct_captions": "int64"})
    return summary, (encoder.meta() if encoder is not None else {"method": None})


def mitigate(training_set: pd.DataFrame, clusters: pd.DataFrame, params: Mapping[str, Any], seed: int
             ) -> pd.DataFrame:
    """The training set after ``params['mitigation']`` on the reportable clusters, with ``cluster_id``,
    ``cluster_size`` and ``dedup_mitigation`` columns added:

    * ``none``: every row as is;
    * ``collapse``: one image per reportable cluster (its first row in training-set order) — the paper's
      "collapse clusters" before training;
    * ``resample_captions``: every image kept, and the members of a reportable cluster get different captions from
      their alternatives where there are enough (seeded), the paper's "partial duplication"; the previous caption
      is kept in ``original_caption``.
    """
    if list(clusters["image_id"]) != list(training_set["image_id"].astype(str)):
        raise ValueError("duplicate_clusters and training_set list different images (or another order): were they "
                         "made from the same training_set version?")
    out = training_set.reset_index(drop=True).copy()
    out["cluster_id"] = clusters["cluster_id"].to_numpy()
    out["cluster_size"] = clusters["cluster_size"].to_numpy()
    out["dedup_mitigation"] = params["mitigation"]
    reportable = clusters["reportable"].to_numpy()
    if params["mitigation"] == "collapse":
        first = ~pd.Series(out["cluster_id"]).duplicated().to_numpy()
        return out[~reportable | first].reset_index(drop=True)
    if params["mitigation"] == "resample_captions":
        lacking = [str(i) for i, r, in_cluster in zip(out["image_id"], out.to_dict("records"), reportable, strict=True)
                   if in_cluster and not captions_of(r)]
        if lacking:
            raise ValueError(f"dedup.mitigation 'resample_captions' gives clustered images other captions from their "
                             f"own, but {len(lacking)} clustered image(s) have no caption (e.g. {lacking[:3]}; "
                             f"{NO_CAPTIONS}): use mitigation none or collapse")
        out["original_caption"] = out["caption"]
        captions = out["caption"].tolist()
        for cid, rows in out[reportable].groupby("cluster_id", sort=True).groups.items():
            rng = python_rng(seed, "dedup", "resample_captions", int(cid))
            used: dict[str, int] = {}
            order = list(rows)
            rng.shuffle(order)
            for r in order:
                options = alternatives(out.loc[r].to_dict())
                fewest = min(used.get(c, 0) for c in options)
                pick = rng.choice([c for c in options if used.get(c, 0) == fewest])
                used[pick] = used.get(pick, 0) + 1
                captions[r] = pick
        out["caption"] = captions
    return out


def pair_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair precision / recall / F1 of a clustering against ground truth (``truth < 0`` = in no true cluster):
    a pair is predicted when both images share a predicted cluster, true when they share a true cluster."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)

    def n_pairs(counts: np.ndarray) -> int:
        return int((counts * (counts - 1) // 2).sum())

    frame = pd.DataFrame({"p": predicted, "t": truth})
    pred = n_pairs(frame.groupby("p").size().to_numpy())
    planted = frame[frame["t"] >= 0]
    true = n_pairs(planted.groupby("t").size().to_numpy())
    both = n_pairs(planted.groupby(["p", "t"]).size().to_numpy())
    precision = both / pred if pred else 1.0
    recall = both / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pair_precision": precision, "pair_recall": recall, "pair_f1": f1,
            "predicted_pairs": float(pred), "true_pairs": float(true)}
