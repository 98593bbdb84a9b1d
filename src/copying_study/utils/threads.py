"""The thread counts CPU results depend on: torch's intra-op threads and the BLAS library's (numpy, scipy).

A float sum split over 1 or 2 threads rounds differently, so the same run on the same inputs gives the same bytes
only at the same counts. The run manifest records them (``device.torch_threads``, ``device.blas_threads``);
``copying-study audit`` re-runs at the recorded counts; ``DaskRunner(threads=N)`` sets them in each group.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def current_threads() -> dict[str, int]:
    """``{"torch": n, "blas": n}`` of this process (a key only for a library that is loaded)."""
    out: dict[str, int] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = int(torch.get_num_threads())
    from threadpoolctl import threadpool_info

    blas = [int(pool["num_threads"]) for pool in threadpool_info() if pool.get("user_api") == "blas"]
    if blas:
        out["blas"] = max(blas)
    return out


@contextmanager
def limit_threads(torch_threads: int | None = None, blas_threads: int | None = None) -> Iterator[None]:
    """Run the block with torch and BLAS at these thread counts (``None``: leave it), then restore them."""
    from threadpoolctl import threadpool_limits

    torch = None
    before = None
    if torch_threads is not None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(int(torch_threads))
    try:
        if blas_threads is not None:
            with threadpool_limits(limits=int(blas_threads), user_api="blas"):
                yield
        else:
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)
