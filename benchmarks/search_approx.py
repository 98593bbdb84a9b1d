"""Approximate threshold graph at scale: time and recall of the true pairs (IVF or HNSW), on synthetic 512-d data.

The data imitate copy descriptors: N unit vectors around ``--topics`` topic centres (cosine ≈ 0.4 within a topic,
≈ 0 across), and planted near-copy groups (pairs and triplets, cosine 0.75–0.98 to their source). Random and
topic pairs stay far below the threshold (their largest cosine is < 0.7 with overwhelming probability: in 512-d the
fluctuation is ~0.04), so the true pairs are the planted pairs whose exact cosine is >= threshold, and recall is
measured against them without an N² search. Scores of found pairs are exact (IVF-Flat and HNSW-Flat keep the
vectors), so precision is 1 by construction; "extra" counts found pairs that were not planted.

    python benchmarks/search_approx.py                               # N = 1M, IVF (nlist 2048, nprobe 8)
    python benchmarks/search_approx.py --n 50000 --nlist 256          # a quick check
    python benchmarks/search_approx.py --kind hnsw --n 200000
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

DIM = 512


def synthetic(n: int, topics: int, n_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, 512] unit rows, planted pair i, planted pair j) built in blocks to limit memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, DIM), dtype=np.float32)
    sigma = np.sqrt(1.5 / DIM)  # within-topic cosine ≈ 1 / (1 + 1.5) = 0.4
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, topics, m)] + rng.standard_normal((m, DIM), dtype=np.float32) * sigma
        x[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows = rng.choice(n, size=3 * n_groups, replace=False).reshape(n_groups, 3)
    pi, pj = [], []
    for g, (src, a, b) in enumerate(rows):
        members = [a, b] if g % 2 else [a]  # alternate pairs and triplets
        for dst in members:
            noise = rng.standard_normal(DIM).astype(np.float32) * float(rng.uniform(0.2, 0.75)) / np.sqrt(DIM) * 1.6
            v = x[src] + noise
            x[dst] = v / np.linalg.norm(v)
            pi.append(src)
            pj.append(dst)
        if len(members) == 2:
            pi.append(a)
            pj.append(b)
    pi, pj = np.asarray(pi), np.asarray(pj)
    return x, np.minimum(pi, pj), np.maximum(pi, pj)


def main(argv: list[str] | None = None) -> None:
    from copying_study.search import build_index, threshold_pairs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=5000, help="planted near-copy groups")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--kind", default="ivf", choices=["ivf", "hnsw"])
    parser.add_argument("--nlist", type=int, default=2048)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=65536)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    x, pi, pj = synthetic(args.n, args.topics, args.groups)
    true = np.einsum("nd,nd->n", x[pi], x[pj]) >= args.threshold
    truth = set(zip(pi[true].tolist(), pj[true].tolist(), strict=True))
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.kind == "ivf":
        index = build_index(x, "ivf", nlist=args.nlist, nprobe=args.nprobe, train_size=args.train_size)
    else:
        index = build_index(x, "hnsw", hnsw_m=args.hnsw_m, ef_search=args.ef_search)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    i, j, _ = threshold_pairs(x, args.threshold, index=index, chunk_size=16384)
    t_search = time.perf_counter() - t0
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    recall = len(found & truth) / max(1, len(truth))
    settings = ", ".join(f"{k}={v}" for k, v in index.describe().items() if k not in ("ntotal", "dim", "exact"))
    print(f"machine: {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"N={args.n}, d={DIM}, threshold {args.threshold}, {len(truth)} true pairs; index: {settings}")
    header = f"{'data s':>8} {'build s':>8} {'search s':>9} {'total s':>8} {'recall':>8} {'extra':>6} {'RSS MB':>8}"
    print(header)
    print("-" * len(header))
    print(f"{t_data:>8.1f} {t_build:>8.1f} {t_search:>9.1f} {t_build + t_search:>8.1f} {recall:>8.4f} "
          f"{len(found - truth):>6} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:>8.0f}")


if __name__ == "__main__":
    main()
