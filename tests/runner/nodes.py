"""Toy node functions for the DaskRunner tests (a module, so that worker processes import them by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd


def make_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": list(range(int(n)))})


def double(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(x=table["x"] * 2)


def total(table: pd.DataFrame) -> dict:
    return {"total": int(table["x"].sum())}


def fail_once(table: pd.DataFrame, marker: str) -> pd.DataFrame:
    """Raises on the first attempt (no marker file yet), passes on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted")
        raise RuntimeError("first attempt fails")
    return table


def die_once(table: pd.DataFrame, marker: str) -> pd.DataFrame:
    """Kills its own worker process on the first attempt (no marker file yet), passes on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted")
        os.kill(os.getpid(), signal.SIGKILL)
    return table


def always_fail(table: pd.DataFrame) -> pd.DataFrame:
    raise ValueError("this cell always fails")
