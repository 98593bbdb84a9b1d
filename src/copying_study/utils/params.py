"""Parameter checking shared by the stages' nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_keys(params: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """``params`` as a dict when it is a mapping with exactly the ``allowed`` keys; else a ``ValueError`` naming the
    parameter group (``where``), the unknown and the missing keys."""
    if not isinstance(params, Mapping):
        raise ValueError(f"parameters '{where}' must be a mapping with keys {list(allowed)}, got {params!r}")
    unknown = sorted(set(params) - set(allowed))
    missing = [k for k in allowed if k not in params]
    if unknown or missing:
        raise ValueError(
            f"parameters '{where}': unknown key(s) {unknown}, missing key(s) {missing}; allowed: {list(allowed)}"
        )
    return dict(params)
