"""What a stage's ``*_metrics`` output becomes in MLflow (framework-free: no Kedro, no MLflow import).

A metrics output is a dict of numbers, of ``[[step, value], ...]`` histories, or of nested dicts of those. MLflow
takes flat names and finite floats: :func:`flatten` names a nested value ``a.b.c``; :func:`metrics_to_log` keeps the
finite numbers and histories; :func:`metrics_history` writes them in the format of kedro-mlflow's
``MlflowMetricsHistoryDataset`` (``{name: [{"step": s, "value": v}, ...]}``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["flatten", "metrics_to_log", "metrics_history"]


def flatten(d: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (leaves that are not dicts are kept as they are)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    else:
        out[prefix] = d
    return out


def metrics_to_log(value: Any) -> dict[str, list[tuple[int, float]]]:
    """Normalise a ``*_metrics`` output into ``{name: [(step, value), ...]}`` with finite floats only (booleans,
    ``None``, strings and non-finite numbers are left out; a plain number is step 0)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for key, v in flatten(value).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            if math.isfinite(float(v)):
                out[key] = [(0, float(v))]
        elif isinstance(v, (list, tuple)) and v and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
            history = [(int(s), float(x)) for s, x in v if x is not None and math.isfinite(float(x))]
            if history:
                out[key] = history
    return out


def metrics_history(value: Any) -> dict[str, list[dict[str, float]]]:
    """A ``*_metrics`` output in ``MlflowMetricsHistoryDataset``'s format: ``{name: [{"step", "value"}, ...]}``."""
    return {key: [{"step": step, "value": x} for step, x in history]
            for key, history in metrics_to_log(value).items()}
