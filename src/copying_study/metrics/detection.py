"""How well Wen et al.'s detection scores predict copying: AUC and TPR at 1 % FPR over prompts, with intervals.

The unit is the **prompt** (Wen et al. detect memorized *prompts*). A prompt is **memorized** when at least one of
its generations is a copy on the calibrated scale (``replication_scores.copy``). Each prompt gets two scores from
the generations' ``detect_first`` / ``detect_mean`` (``copying_study.diffusion.detection``):

* ``first_step``: the first-step score of the prompt's first generation (lowest ``gen_id``): one UNet call, the
  prompt-level score the copy guard can use before sampling;
* ``step_mean``: the score averaged over all sampling steps and over all the prompt's generations (their code's
  strongest variant).

**AUC** is the probability that a memorized prompt scores above a non-memorized one (ties count half: the
Mann-Whitney statistic, as ``sklearn.metrics.roc_auc_score``). **TPR at 1 % FPR**: with ``m = floor(0.01 · n_neg)``
false positives allowed, the share of memorized prompts scoring strictly above the ``(m+1)``-th highest
non-memorized score (the best point of the ROC curve with FPR <= 1 %; with fewer than 100 non-memorized prompts
that means no false positive). Intervals: percentile bootstrap over prompts (``scipy.stats.bootstrap`` on the
prompt indices, seeded); a resample without both classes has no value and is left out (counted in ``n_valid``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

SCORES = {"first_step": "detect_first", "step_mean": "detect_mean"}
"""The prompt-level scores and the generation column each is made from."""

MAX_FPR = 0.01
_MAX_RESAMPLED_VALUES = 2_000_000


def prompt_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per ``original_prompt`` of ``replication_scores``: ``memorized`` (any generation a copy),
    ``n_generations``, ``first_step`` and ``step_mean`` (see the module docstring; NaN where the generations have
    no detection scores)."""
    missing = [c for c in ("gen_id", "original_prompt", "copy") if c not in scores.columns]
    if missing:
        raise ValueError(f"replication_scores lacks column(s) {missing} for the detection quality")
    frame = scores.sort_values("gen_id", kind="stable")
    rows = []
    for prompt, group in frame.groupby("original_prompt", sort=True):
        first = group.iloc[0]
        rows.append({
            "prompt": prompt,
            "memorized": bool(group["copy"].astype(bool).any()),
            "n_generations": int(len(group)),
            "first_step": float(first.get("detect_first", math.nan)),
            "step_mean": float(pd.to_numeric(group.get("detect_mean"), errors="coerce").mean())
            if "detect_mean" in group else math.nan,
        })
    return pd.DataFrame(rows, columns=["prompt", "memorized", "n_generations", "first_step", "step_mean"])


def _auc(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row-wise Mann-Whitney AUC of ``values`` [B, n] for boolean ``labels`` [B, n]; NaN without both classes."""
    ranks = stats.rankdata(values, axis=-1)
    n_pos = labels.sum(axis=-1)
    n_neg = labels.shape[-1] - n_pos
    u = (ranks * labels).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _tpr_at_fpr(labels: np.ndarray, values: np.ndarray, max_fpr: float = MAX_FPR) -> np.ndarray:
    """Row-wise TPR at FPR <= ``max_fpr`` (see the module docstring); NaN without both classes."""
    out = np.full(labels.shape[0], np.nan)
    for b in range(labels.shape[0]):
        pos, neg = values[b][labels[b]], values[b][~labels[b]]
        if pos.size == 0 or neg.size == 0:
            continue
        allowed = int(math.floor(max_fpr * neg.size + 1e-9))
        cut = np.sort(neg)[::-1][allowed] if allowed < neg.size else -np.inf
        out[b] = float(np.mean(pos > cut))
    return out


def _interval(statistic, labels: np.ndarray, values: np.ndarray, n_boot: int, confidence: float, seed: int
              ) -> tuple[list[float] | None, int]:
    n = labels.size

    def on_rows(i: np.ndarray, axis: int = -1) -> np.ndarray:
        i = np.atleast_2d(i)
        return statistic(labels[i], values[i])

    import warnings

    with warnings.catch_warnings():  # resamples without both classes have no value: left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((np.arange(n),), on_rows, n_resamples=int(n_boot), vectorized=True, axis=-1,
                              batch=max(1, _MAX_RESAMPLED_VALUES // n), confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    valid = dist[np.isfinite(dist)]
    if valid.size < 0.5 * int(n_boot):
        return None, int(valid.size)
    q = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    return [float(v) for v in np.quantile(valid, q)], int(valid.size)


def detection_quality(table: pd.DataFrame, seed: int, n_boot: int = 1000, confidence: float = 0.95
                      ) -> dict[str, Any]:
    """For each score of :data:`SCORES`: ``auc``, ``auc_ci``, ``tpr_at_1pct_fpr``, ``tpr_at_1pct_fpr_ci``, with the
    numbers of prompts; or ``skipped`` with the reason (no scores, or one class only)."""
    out: dict[str, Any] = {
        "unit": "prompt", "label": "memorized = at least one of the prompt's generations is a copy",
        "n_prompts": int(len(table)), "n_memorized": int(table["memorized"].sum()) if len(table) else 0,
        "cost": ("generations' scores: 0 s extra (from the two noise predictions classifier-free guidance makes "
                 "anyway); the copy guard's prompt-level score before sampling: one UNet call per prompt "
                 "(benchmarks/detection_cost.py; docs/evaluate.md)"),
    }
    for k, name in enumerate(SCORES):
        values = table[name].to_numpy(dtype=np.float64) if len(table) else np.zeros(0)
        keep = np.isfinite(values)
        labels = table["memorized"].to_numpy(dtype=bool)[keep] if len(table) else np.zeros(0, bool)
        values = values[keep]
        if values.size == 0:
            out[name] = {"skipped": "the generations carry no detection scores (sampled without classifier-free "
                                    "guidance, or made elsewhere)"}
            continue
        if labels.all() or not labels.any():
            out[name] = {"skipped": f"every one of the {labels.size} prompts is "
                                    f"{'memorized' if labels.all() else 'not memorized'}: AUC needs both",
                         "n_prompts": int(labels.size), "n_memorized": int(labels.sum())}
            continue
        auc = float(_auc(labels[None], values[None])[0])
        tpr = float(_tpr_at_fpr(labels[None], values[None])[0])
        auc_ci, n_valid = _interval(_auc, labels, values, n_boot, confidence, seed + 2 * k)
        tpr_ci, _ = _interval(_tpr_at_fpr, labels, values, n_boot, confidence, seed + 2 * k + 1)
        out[name] = {"auc": auc, "auc_ci": auc_ci, "tpr_at_1pct_fpr": tpr, "tpr_at_1pct_fpr_ci": tpr_ci,
                     "n_prompts": int(labels.size), "n_memorized": int(labels.sum()), "n_valid_resamples": n_valid}
    return out
