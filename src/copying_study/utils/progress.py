"""Progress bars for long steps: tqdm on stderr, drawn only when stderr is a terminal (a log file or a CI console
gets no bars) and never when ``COPYING_STUDY_NO_PROGRESS`` is set. A finished bar is erased (``leave=False``), so a
run's console keeps only its log lines."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and ``COPYING_STUDY_NO_PROGRESS`` is not set."""
    if os.environ.get("COPYING_STUDY_NO_PROGRESS"):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", **kwargs):
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(), mininterval=1.0,
                **kwargs)
