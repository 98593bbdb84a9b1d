"""Correlation of a measure with a score: Pearson and Spearman r, their p-values and seeded bootstrap intervals.

Point estimates and p-values come from ``scipy.stats.pearsonr`` / ``spearmanr`` (two-sided). Intervals are paired
percentile-bootstrap intervals from ``scipy.stats.bootstrap`` (``paired=True``): rows (x, y pairs) are resampled
with replacement ``n_boot`` times from a numpy Generator seeded by the caller, r is recomputed on each resample, and
the interval is the central ``confidence`` quantile range of those r. A resample in which either column is constant
has no r; such resamples are left out of scipy's bootstrap distribution and counted (``n_valid``), and when fewer
than half remain no interval is given (``ci_reason`` says why).

Degenerate inputs are results, not crashes and not silent NaN: fewer than ``MIN_ROWS`` rows or a constant column
gives ``status: "not_computable"`` with a ``reason``. Non-finite input (NaN, inf) is an error naming the positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

MIN_ROWS = 3
"""The fewest rows for which a correlation (and its p-value) is reported."""

MIN_VALID_BOOT_FRACTION = 0.5
"""An interval is given only when at least this fraction of bootstrap resamples had a defined r."""

_MAX_RESAMPLED_VALUES = 2_000_000  # values per column held in memory at once while bootstrapping


def finite_vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array; ``ValueError`` naming ``name`` and the positions of NaN/inf values."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"'{name}' must be one-dimensional, got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"'{name}' has {bad.size} non-finite value(s) at positions {bad[:10].tolist()}")
    return v


def not_computable_reason(x: np.ndarray, y: np.ndarray, x_name: str = "x", y_name: str = "y") -> str | None:
    """Why the correlation of ``x`` and ``y`` is undefined (too few rows, a constant column), or ``None``."""
    n = len(x)
    if n < MIN_ROWS:
        return f"only {n} row(s); a correlation needs at least {MIN_ROWS}"
    for name, v in ((x_name, x), (y_name, y)):
        if np.ptp(v) == 0:
            return f"'{name}' is constant ({v[0]:.6g}) over all {n} rows, so its correlation is undefined"
    return None


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``a`` with the same row of ``b`` (both [B, n]); NaN where either row is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=1) / den
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def resample_ranks(codes: np.ndarray, n_levels: int, idx: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged, as ``scipy.stats.rankdata``) of each resample without sorting.

    ``codes`` are the rank order codes of the original values (``np.unique(v, return_inverse=True)[1]``, so equal
    values share a code and codes follow value order), ``n_levels`` the number of distinct values and ``idx`` the
    resample indices [B, n]. In a resample, a value's rank is the count of smaller values drawn plus the mean
    position among its own copies: ``below + (copies + 1) / 2`` — O(B·n) instead of a sort per resample.
    """
    b, n = idx.shape
    drawn = codes[idx]
    offsets = (np.arange(b) * n_levels)[:, None]
    copies = np.bincount((drawn + offsets).ravel(), minlength=b * n_levels).reshape(b, n_levels)
    below = np.cumsum(copies, axis=1) - copies
    level_rank = below + (copies + 1) / 2.0
    return np.take_along_axis(level_rank, drawn, axis=1)


def bootstrap_distribution(rows: np.ndarray, statistic, n_boot: int, confidence: float, seed: int, batch: int
                           ) -> np.ndarray:
    """The ``n_boot`` values of a vectorised ``statistic`` over ``scipy.stats.bootstrap`` resamples of ``rows``
    (percentile method, ``np.random.default_rng(seed)``); NaN where a resample has no value."""
    import warnings

    with warnings.catch_warnings():  # resamples without a value make scipy's own percentile NaN: we filter them
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((rows,), statistic, n_resamples=n_boot, batch=batch, vectorized=True, axis=-1,
                              confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(res.bootstrap_distribution, dtype=np.float64)


def bootstrap_correlation_ci(
    x: np.ndarray, y: np.ndarray, *, n_boot: int, confidence: float, seed: int
) -> dict[str, Any]:
    """Paired percentile-bootstrap intervals for Pearson and Spearman r (see the module docstring).

    Returns ``pearson_ci`` and ``spearman_ci`` (``[low, high]`` or ``None``), ``n_boot``, ``n_valid``,
    ``confidence``, ``seed``, ``method`` and ``ci_reason`` (``None`` when both intervals exist).
    """
    x = finite_vector(x, "x")
    y = finite_vector(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    n, n_boot = len(x), int(n_boot)
    record: dict[str, Any] = {
        "pearson_ci": None, "spearman_ci": None, "n_boot": n_boot, "n_valid": 0,
        "confidence": float(confidence), "seed": int(seed),
        "method": "paired percentile bootstrap (scipy.stats.bootstrap, rows resampled with replacement)", "ci_reason": None,
    }
    if n == 0:
        record["ci_reason"] = "no rows to resample"
        return record
    if n < 2:
        record["ci_reason"] = "one row: every resample is that row"
        return record
    (x_levels, x_codes), (y_levels, y_codes) = (np.unique(v, return_inverse=True) for v in (x, y))

    def pearson(i: np.ndarray, axis: int = -1) -> np.ndarray:
        return rowwise_pearson(x[i], y[i])

    def spearman(i: np.ndarray, axis: int = -1) -> np.ndarray:
        return rowwise_pearson(resample_ranks(x_codes, len(x_levels), i), resample_ranks(y_codes, len(y_levels), i))

    # scipy resamples the row indices (so x and y stay paired and Spearman's ranks need no sort); both statistics see
    # the same resamples: the same seed gives the same draws.
    p_all, s_all = (
        bootstrap_distribution(np.arange(n), statistic, n_boot, confidence, seed, max(1, _MAX_RESAMPLED_VALUES // n))
        for statistic in (pearson, spearman)
    )
    valid = ~np.isnan(p_all) & ~np.isnan(s_all)
    record["n_valid"] = int(valid.sum())
    if record["n_valid"] < MIN_VALID_BOOT_FRACTION * n_boot:
        record["ci_reason"] = (
            f"only {record['n_valid']} of {n_boot} bootstrap resamples had two non-constant columns "
            f"(fewer than {MIN_VALID_BOOT_FRACTION:.0%}); too few distinct rows for an interval"
        )
        return record
    q = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    record["pearson_ci"] = [float(v) for v in np.quantile(p_all[valid], q)]
    record["spearman_ci"] = [float(v) for v in np.quantile(s_all[valid], q)]
    return record


def correlate(
    x: Any,
    y: Any,
    *,
    x_name: str = "x",
    y_name: str = "y",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Pearson and Spearman correlation of ``x`` with ``y``, with p-values and seeded bootstrap intervals.

    Returns ``{"status": "ok" | "not_computable", "reason", "n", "pearson_r", "pearson_p", "spearman_r",
    "spearman_p", "pearson_ci", "spearman_ci", "bootstrap": {...}}``; numbers are ``None`` when not computable.
    Raises ``ValueError`` for NaN/inf values (naming ``x_name``/``y_name``) or different lengths.
    """
    xv, yv = finite_vector(x, x_name), finite_vector(y, y_name)
    if len(xv) != len(yv):
        raise ValueError(f"'{x_name}' and '{y_name}' have different lengths ({len(xv)} and {len(yv)})")
    out: dict[str, Any] = {
        "status": "ok", "reason": None, "n": len(xv),
        "pearson_r": None, "pearson_p": None, "spearman_r": None, "spearman_p": None,
        "pearson_ci": None, "spearman_ci": None, "bootstrap": None,
    }
    reason = not_computable_reason(xv, yv, x_name, y_name)
    if reason is not None:
        out.update(status="not_computable", reason=reason)
        return out
    pearson = stats.pearsonr(xv, yv)
    spearman = stats.spearmanr(xv, yv)
    boot = bootstrap_correlation_ci(xv, yv, n_boot=n_boot, confidence=confidence, seed=seed)
    out.update(
        pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
        spearman_r=float(spearman.statistic), spearman_p=float(spearman.pvalue),
        pearson_ci=boot.pop("pearson_ci"), spearman_ci=boot.pop("spearman_ci"), bootstrap=boot,
    )
    return out
