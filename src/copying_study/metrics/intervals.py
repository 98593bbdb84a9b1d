"""Intervals over generations *and* seeds, for the study grid's comparisons.

A grid cell is run once per seed; each run makes many generations. Both are sources of variation: the seed decides
the model (its initialisation, the duplicated images, every batch) and the generations vary within a model. The
intervals here resample both, hierarchically: draw the seeds with replacement, then, within each drawn seed, its
generations with replacement, and compute the statistic on the pooled draw (a two-stage cluster bootstrap; Davison &
Hinkley 1997, §3.8). The percentile interval of ``n_boot`` such draws is reported, with the statistic of the pooled
data as the estimate. With few seeds the seed stage is coarse (three seeds can only be drawn 10 ways), so the
interval is wide when the seeds disagree — which is the point.

A **difference** between two cells is bootstrapped *paired by seed*: the same seed draws for both cells (a seed gives
both cells the same base model, training images, duplicated images and generation seeds), generations drawn
independently within each. An interval that excludes 0 is what the report calls a reproduced direction.

``scipy.stats.bootstrap`` resamples one level of independent observations and has no hierarchical mode, so the two
stages are written here in numpy; every draw comes from ``numpy_rng(seed, "intervals", name)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from copying_study.utils.seeding import numpy_rng

Statistic = Callable[[np.ndarray], float]


def copy_rate(values: np.ndarray) -> float:
    """Share of true values (copy flags)."""
    return float(np.mean(values))


def dataset_similarity(values: np.ndarray) -> float:
    """The paper's dataset similarity: the 95th percentile (linear interpolation) of top-1 similarities."""
    return float(np.percentile(values, 95))


def _groups(groups: Mapping[int, Sequence[float]] | Sequence[Sequence[float]]) -> list[np.ndarray]:
    items = groups.values() if isinstance(groups, Mapping) else groups
    out = [np.asarray(g, dtype=np.float64) for g in items]
    return [g for g in out if g.size]


def _draw(groups: list[np.ndarray], seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([groups[s][rng.integers(0, groups[s].size, groups[s].size)] for s in seeds])


def hierarchical_interval(
    groups: Mapping[int, Sequence[float]] | Sequence[Sequence[float]],
    statistic: Statistic,
    seed: int,
    name: str,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> dict[str, float | int | list[float]]:
    """``statistic`` of the pooled ``groups`` (one array of per-generation values per seed; empty ones are left
    out) with its two-stage bootstrap interval: ``{"estimate", "ci": [low, high], "n_seeds", "n"}``."""
    g = _groups(groups)
    if not g:
        raise ValueError(f"no values for the interval '{name}'")
    if not 0.0 < confidence < 1.0 or int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    rng = numpy_rng(seed, "intervals", name)
    draws = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        draws[b] = statistic(_draw(g, rng.integers(0, len(g), len(g)), rng))
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return {"estimate": statistic(np.concatenate(g)), "ci": [float(lo), float(hi)], "n_seeds": len(g),
            "n": int(sum(x.size for x in g))}


def paired_difference(
    groups_a: Mapping[int, Sequence[float]],
    groups_b: Mapping[int, Sequence[float]],
    statistic: Statistic,
    seed: int,
    name: str,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> dict[str, float | int | bool | list[float]]:
    """``statistic(a) - statistic(b)`` with a two-stage bootstrap interval paired by seed (only seeds both cells
    have, with values on both sides): ``{"estimate", "ci", "n_seeds", "excludes_zero"}``."""
    shared = sorted(k for k in groups_a if k in groups_b and len(groups_a[k]) and len(groups_b[k]))
    if not shared:
        raise ValueError(f"the difference '{name}' has no seed with values in both cells")
    a = [np.asarray(groups_a[k], dtype=np.float64) for k in shared]
    b = [np.asarray(groups_b[k], dtype=np.float64) for k in shared]
    rng = numpy_rng(seed, "intervals", "difference", name)
    draws = np.empty(int(n_boot))
    for i in range(int(n_boot)):
        seeds = rng.integers(0, len(shared), len(shared))
        draws[i] = statistic(_draw(a, seeds, rng)) - statistic(_draw(b, seeds, rng))
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    estimate = statistic(np.concatenate(a)) - statistic(np.concatenate(b))
    return {"estimate": float(estimate), "ci": [float(lo), float(hi)], "n_seeds": len(shared),
            "excludes_zero": bool(lo > 0 or hi < 0)}
