"""Node functions of ``benchmarks/dask_grid.py``'s GPU-like grid (a module, so Dask workers import them by name):
each waits, as a CPU does while its GPU works, and passes a small value on."""

from __future__ import annotations

import time
from typing import Any


def data_stage(seconds: float) -> dict[str, Any]:
    time.sleep(float(seconds))
    return {"rows": 100}


def wait_stage(upstream: Any, seconds: float) -> dict[str, Any]:
    time.sleep(float(seconds))
    return {"from": type(upstream).__name__, "waited": float(seconds)}


def collect(*cells: Any) -> dict[str, Any]:
    return {"cells": len(cells)}
