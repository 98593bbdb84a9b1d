"""The threshold graph on Dask (``copying_study.search.sharded.sharded_threshold_pairs``) against the single-process
``threshold_pairs``, in the same run, on this machine.

    python benchmarks/dedup_sharded.py             # N = 200 000 (about 10 minutes on 2 cores)
    python benchmarks/dedup_sharded.py --quick     # N = 20 000: a check that the script works

Data: ``benchmarks/search_selfjoin.py``'s seeded 512-d float32 unit descriptors, 2 % of them planted near copies
(cosine ≈ 0.75–0.98), at dedup's default threshold 0.75. The single process runs first, alone (faiss on every core);
then a ``LocalCluster`` of ``--workers`` single-threaded worker processes starts, its workers import the library
(what a DaskRunner worker has done before dedup starts), and the sharded search runs with shards of
``--shard-size`` rows (dedup's default 50 000). Reported: wall seconds, the pairs (they must be identical), the
peak RSS of this process and, sampled every half second with ``psutil`` through ``client.run``, of each worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class WorkerMemory:
    """Each worker's RSS, sampled every ``every`` seconds while running: ``start`` and ``peak`` per worker."""

    def __init__(self, client, every: float = 0.5) -> None:
        self.client, self.every = client, every
        self.start = client.run(_rss)
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for worker, rss in self.client.run(_rss).items():
            self.peak[worker] = max(self.peak.get(worker, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="N = 20 000")
    parser.add_argument("--threshold", type=float, default=0.75, help="dedup.threshold's default")
    parser.add_argument("--shard-size", type=int, default=50_000, help="dedup.distributed_shard_size.search")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.n

    sys.path.insert(0, str(REPO))
    from benchmarks.search_selfjoin import DIM, RssSampler, synthetic
    from copying_study.search import threshold_pairs
    from copying_study.search.sharded import sharded_threshold_pairs

    x = synthetic(n)
    mb = 2**20
    print(f"# {n:,} x {DIM} float32 unit descriptors (2% planted near copies), threshold {args.threshold}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    with RssSampler() as single_mem:
        t0 = time.perf_counter()
        i0, j0, _ = threshold_pairs(x, args.threshold)
        single_s = time.perf_counter() - t0

    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory(prefix="dedup-edges-") as edges:
        client.run(lambda: __import__("copying_study.search.sharded"))
        start_s = time.perf_counter() - t0
        with WorkerMemory(client) as workers, RssSampler() as driver_mem:
            t0 = time.perf_counter()
            i, j, _ = sharded_threshold_pairs(client, x, args.threshold, None, args.shard_size, edges)
            sharded_s = time.perf_counter() - t0
    same = np.array_equal(i, i0) and np.array_equal(j, j0)
    shards = -(-n // args.shard_size)
    peaks = " / ".join(f"{workers.peak[w] / mb:.0f}" for w in sorted(workers.peak))
    starts = " / ".join(f"{workers.start[w] / mb:.0f}" for w in sorted(workers.start))
    print(f"| engine | seconds | pairs | peak RSS this process (MB) | peak RSS per worker (MB; idle {starts}) |")
    print("|---|---|---|---|---|")
    print(f"| single process `threshold_pairs` (faiss flat, {os.cpu_count()} threads) | {single_s:.1f} | "
          f"{i0.size:,} | {single_mem.peak / mb:.0f} | |")
    print(f"| Dask `sharded_threshold_pairs` ({args.workers} workers x 1 thread, {shards} shards of "
          f"{args.shard_size:,}, {shards * (shards + 1) // 2} blocks) | {sharded_s:.1f} | {i.size:,} | "
          f"{driver_mem.peak / mb:.0f} | {peaks} |")
    print(f"# identical pairs: {'yes' if same else 'NO'}; cluster start + worker imports {start_s:.1f} s (not "
          f"counted); load average {os.getloadavg()[0]:.2f} at the end")
    if not same:
        raise SystemExit("the sharded search found other pairs than threshold_pairs")
    return {"single_s": single_s, "sharded_s": sharded_s, "pairs": int(i.size), "same": same}


if __name__ == "__main__":
    main()
