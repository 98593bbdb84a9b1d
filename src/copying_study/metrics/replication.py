"""Replication statistics: training matches of generations, the paper's dataset similarity and its baselines.

Definitions (paper §4 "Metrics"; dcr-notes §2.6):

- a generation's *similarity* is the inner product of its copy descriptor with that of its top-1 training match
  (descriptors are L2-normalised, so this is the cosine similarity);
- the *dataset similarity* is the 95th percentile of those top-1 similarities (numpy's default, linear
  interpolation between order statistics), with a seeded percentile-bootstrap confidence interval;
- ``fraction_above_<t>`` is the share of generations whose top-1 similarity is strictly greater than ``t`` (0.5 in
  the paper);
- the *background* is the same statistics for training-vs-training similarity: each training image against its
  nearest *other* training image. "Other" is decided by row index, never by score, so exact duplicates inside the
  training set still score ~1.0 (as in the paper's code, which keeps the 2nd neighbour);
- MemBench-style per-prompt scores: for each prompt the maximum top-1 similarity over its images and the mean of its
  three highest.

Everything here is framework-free (numpy, pandas, faiss through :mod:`copying_study.search`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from copying_study.utils.seeding import numpy_rng

DATASET_PERCENTILE = 95.0
PAPER_THRESHOLD = 0.5
# bootstrap replicates are drawn in blocks so memory stays below ~64 MB whatever n_boot * n is
_BOOT_BLOCK_ELEMENTS = 8_000_000


def as_scores(values: Sequence[float] | np.ndarray, what: str = "similarities") -> np.ndarray:
    """``values`` as a 1-D float64 array; raises ``ValueError`` when empty or not finite (naming the rows)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"no {what} to summarise (empty input)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{what} contain NaN/inf at rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}")
    return arr


def threshold_key(threshold: float) -> str:
    """The summary key for a threshold: ``0.5`` → ``fraction_above_0_5``."""
    text = f"{float(threshold):g}".replace("-", "minus_").replace(".", "_")
    return f"fraction_above_{text}"


def similarity_statistics(
    values: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = (PAPER_THRESHOLD,),
    percentile: float = DATASET_PERCENTILE,
) -> dict[str, float | int]:
    """Summary of top-1 similarities: ``dataset_similarity`` (the ``percentile``-th percentile), mean, median,
    p75, p90, std, max, ``n`` and ``fraction_above_<t>`` (strictly greater) for each threshold."""
    v = as_scores(values)
    out: dict[str, float | int] = {
        "dataset_similarity": float(np.percentile(v, percentile)),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p75": float(np.percentile(v, 75)),
        "p90": float(np.percentile(v, 90)),
        "std": float(v.std(ddof=0)),
        "max": float(v.max()),
        "n": int(v.size),
    }
    for t in thresholds:
        out[threshold_key(t)] = float(np.mean(v > float(t)))
    return out


def bootstrap_percentile_interval(
    values: Sequence[float] | np.ndarray,
    seed: int,
    name: str,
    n_boot: int = 1000,
    percentile: float = DATASET_PERCENTILE,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the ``percentile``-th percentile of ``values``.

    ``scipy.stats.bootstrap`` (percentile method): ``n_boot`` resamples of size n with replacement, drawn from
    ``numpy_rng(seed, "evaluate", "bootstrap", name)`` so the interval is the same for the same seed and name (and
    independent between names). One value, or all values equal, gives the point interval.
    """
    v = as_scores(values)
    if int(n_boot) < 1:
        raise ValueError(f"evaluate.bootstrap.n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"evaluate.bootstrap.confidence must be in (0, 1), got {confidence}")
    from scipy.stats import bootstrap

    if v.min() == v.max():  # one value or all equal: every resample gives it
        return float(v[0]), float(v[0])

    def statistic(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(sample, percentile, axis=axis)

    res = bootstrap((v,), statistic, n_resamples=int(n_boot), batch=max(1, _BOOT_BLOCK_ELEMENTS // v.size),
                    vectorized=True, confidence_level=float(confidence), method="percentile",
                    rng=numpy_rng(seed, "evaluate", "bootstrap", name))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise_similarities(
    values: Sequence[float] | np.ndarray,
    seed: int,
    name: str,
    thresholds: Sequence[float] = (PAPER_THRESHOLD,),
    n_boot: int = 1000,
    confidence: float = 0.95,
    percentile: float = DATASET_PERCENTILE,
) -> dict[str, Any]:
    """:func:`similarity_statistics` plus ``dataset_similarity_ci`` ([low, high]) from the seeded bootstrap."""
    out: dict[str, Any] = similarity_statistics(values, thresholds, percentile)
    out["dataset_similarity_ci"] = list(
        bootstrap_percentile_interval(values, seed, name, n_boot=n_boot, percentile=percentile,
                                      confidence=confidence)
    )
    return out


def top_matches(
    queries: np.ndarray, base: np.ndarray, base_ids: Sequence[str], k: int
) -> tuple[np.ndarray, list[list[str]]]:
    """The ``k`` most similar base rows of every query (faiss inner product): scores [N, k'] and their ids.

    ``k' = min(k, len(base))``; rows are sorted by decreasing score.
    """
    from copying_study.search import knn

    check_descriptor_arrays(queries, base, "generation", "training")
    if len(base_ids) != base.shape[0]:
        raise ValueError(f"{base.shape[0]} training descriptors but {len(base_ids)} training ids")
    if int(k) < 1:
        raise ValueError(f"evaluate.k must be >= 1, got {k}")
    kk = min(int(k), base.shape[0])
    scores, idx = knn(queries, base, k=kk)
    idx = np.asarray(idx)
    if (idx < 0).any():
        raise RuntimeError("nearest-neighbour search returned missing neighbours (index -1)")
    ids = np.asarray([str(x) for x in base_ids], dtype=object)
    return np.asarray(scores, dtype=np.float32), [list(ids[row]) for row in idx]


def nearest_other(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar *other* row: (scores [N], indices [N]).

    The row itself is removed by position (``knn(..., exclude_self=True)``), never by score, so an exact duplicate
    elsewhere in the set (score ~1.0, possibly ranked above the row itself on a tie) is kept as the nearest other.
    """
    from copying_study.search import knn

    check_descriptor_arrays(embeddings, embeddings, "training", "training")
    if embeddings.shape[0] < 2:
        raise ValueError("the background needs at least 2 training images (nearest *other* image)")
    scores, idx = knn(embeddings, embeddings, k=1, exclude_self=True)
    return np.asarray(scores)[:, 0].astype(np.float32), np.asarray(idx)[:, 0].astype(np.int64)


def check_descriptor_arrays(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Both arrays [N, d] with the same d, finite and non-empty; otherwise ``ValueError`` naming the problem."""
    for arr, name in ((a, name_a), (b, name_b)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise ValueError(f"{name} descriptors must be a 2-D array [N, d], got {getattr(arr, 'shape', type(arr))}")
        if arr.shape[0] == 0:
            raise ValueError(f"no {name} descriptors (empty array)")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} descriptors contain NaN/inf")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"descriptor dimensions differ: {name_a} {a.shape[1]}-d vs {name_b} {b.shape[1]}-d "
            "(were they computed with different descriptors?)"
        )


def per_prompt_scores(prompts: Sequence[str], top1: Sequence[float] | np.ndarray, top: int = 3) -> pd.DataFrame:
    """MemBench-style scores per prompt: ``prompt``, ``n_images``, ``max_similarity`` and ``top<top>_mean`` (the
    mean of the ``top`` highest top-1 similarities of its images, or of all of them when it has fewer)."""
    v = as_scores(top1, "top-1 similarities")
    if len(prompts) != v.size:
        raise ValueError(f"{len(prompts)} prompts for {v.size} similarities")
    if int(top) < 1:
        raise ValueError(f"evaluate.per_prompt_top must be >= 1, got {top}")
    frame = pd.DataFrame({"prompt": [str(p) for p in prompts], "similarity": v})
    rows = []
    for prompt, group in frame.groupby("prompt", sort=True):
        s = np.sort(group["similarity"].to_numpy())[::-1]
        rows.append({"prompt": prompt, "n_images": int(s.size), "max_similarity": float(s[0]),
                     f"top{int(top)}_mean": float(s[: int(top)].mean())})
    return pd.DataFrame(rows)


def per_prompt_summary(table: pd.DataFrame, top: int = 3,
                       thresholds: Sequence[float] = (PAPER_THRESHOLD,)) -> dict[str, Any]:
    """Summary of :func:`per_prompt_scores`: number of prompts, mean / median / p95 of the per-prompt maximum and of
    the per-prompt top-k mean, and the share of prompts whose maximum is above each threshold."""
    col = f"top{int(top)}_mean"
    mx, topk = table["max_similarity"].to_numpy(), table[col].to_numpy()
    out: dict[str, Any] = {
        "n_prompts": int(len(table)),
        "images_per_prompt_mean": float(table["n_images"].mean()),
        "max": {"mean": float(mx.mean()), "median": float(np.median(mx)), "p95": float(np.percentile(mx, 95))},
        col: {"mean": float(topk.mean()), "median": float(np.median(topk)), "p95": float(np.percentile(topk, 95))},
    }
    for t in thresholds:
        out[f"prompts_max_{threshold_key(t)}"] = float(np.mean(mx > float(t)))
    return out


def split_statistics(
    values: Sequence[float] | np.ndarray,
    labels: Sequence[Hashable],
    thresholds: Sequence[float] = (PAPER_THRESHOLD,),
    percentile: float = DATASET_PERCENTILE,
) -> dict[str, dict[str, float | int]]:
    """:func:`similarity_statistics` for each group of ``labels`` (groups with no rows are absent)."""
    v = as_scores(values)
    labels = list(labels)
    if len(labels) != v.size:
        raise ValueError(f"{len(labels)} labels for {v.size} similarities")
    out: dict[str, dict[str, float | int]] = {}
    for label in sorted(set(labels), key=str):
        mask = np.array([lab == label for lab in labels])
        out[str(label)] = similarity_statistics(v[mask], thresholds, percentile)
    return out


def duplicated_split(
    top1: Sequence[float] | np.ndarray,
    source_duplicated: Sequence[bool | None],
    thresholds: Sequence[float] = (PAPER_THRESHOLD,),
) -> dict[str, Any]:
    """Similarity of generations whose source image was duplicated in finetuning vs not.

    Generations without a source image (``None``) are counted under ``n_without_source`` and left out. Returns
    ``{"duplicated": stats, "not_duplicated": stats, "difference_dataset_similarity": ..., ...}``, or
    ``{"skipped": reason}`` when no generation has a known source.
    """
    v = as_scores(top1)
    flags = list(source_duplicated)
    known = np.array([f is not None and not (isinstance(f, float) and np.isnan(f)) for f in flags])
    if not known.any():
        return {"skipped": "no generation has a known source image (prompts not taken from training captions)"}
    labels = ["duplicated" if bool(flags[i]) else "not_duplicated" for i in np.flatnonzero(known)]
    out: dict[str, Any] = split_statistics(v[known], labels, thresholds)
    out["n_without_source"] = int((~known).sum())
    if "duplicated" in out and "not_duplicated" in out:
        out["difference_dataset_similarity"] = (
            out["duplicated"]["dataset_similarity"] - out["not_duplicated"]["dataset_similarity"]
        )
        out["difference_mean"] = out["duplicated"]["mean"] - out["not_duplicated"]["mean"]
    return out


def planted_cluster_split(
    top1: Sequence[float] | np.ndarray,
    clusters: Sequence[int | None],
    thresholds: Sequence[float] = (PAPER_THRESHOLD,),
) -> dict[str, Any]:
    """Similarity of generations by the planted duplicate cluster of an image (``-1`` = not planted).

    ``clusters`` holds one cluster id per generation (``None`` when unknown, left out). Returns ``planted`` and
    ``not_planted`` statistics and ``per_cluster`` {id: {n, mean, max}}, or ``{"skipped": reason}``.
    """
    v = as_scores(top1)
    cl = list(clusters)
    known = np.array([c is not None and not (isinstance(c, float) and np.isnan(c)) for c in cl])
    if not known.any():
        return {"skipped": "no generation has a known planted cluster"}
    ids = np.array([int(cl[i]) for i in np.flatnonzero(known)])
    vk = v[known]
    out: dict[str, Any] = split_statistics(vk, ["planted" if c >= 0 else "not_planted" for c in ids], thresholds)
    out["per_cluster"] = {
        str(c): {"n": int((ids == c).sum()), "mean": float(vk[ids == c].mean()), "max": float(vk[ids == c].max())}
        for c in sorted(set(ids.tolist())) if c >= 0
    }
    out["n_unknown"] = int((~known).sum())
    return out


def lookup(ids: Sequence[str | None], table: Mapping[str, Any]) -> list[Any]:
    """``table[id]`` for each id; ``None`` for a missing/``None`` id."""
    return [table.get(str(i)) if i is not None and not (isinstance(i, float) and np.isnan(i)) else None
            for i in ids]
