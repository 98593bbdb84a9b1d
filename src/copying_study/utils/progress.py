"""Progress bars for long steps (tqdm, on stderr, quiet when COPYING_STUDY_NO_PROGRESS is set)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", **kwargs):
    disable = bool(os.environ.get("COPYING_STUDY_NO_PROGRESS"))
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, mininterval=1.0, **kwargs)
