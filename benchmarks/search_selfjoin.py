"""Self-join benchmark: all pairs with cosine >= threshold among N synthetic 512-d unit descriptors.

Compares the project's exact search (``copying_study.search.threshold_pairs``: faiss IndexFlatIP, chunked kNN with
growing k, memory O(N·k)) with the dense chunked torch matmul the paper's code uses (``sims = A @ B.T`` per block
of rows, then a threshold), and reports time, memory (each measurement in a fresh process: peak RSS, and the
method's own working memory above the libraries and the input), achieved GFLOP/s (2·N²·d flops: both methods
compute every product) and its ratio to this machine's sgemm rate (numpy and torch ``matmul`` of 4096×512 by
512×N, the same shape of work, best of 3).

    python benchmarks/search_selfjoin.py                          # the full table: N = 10k, 50k, 200k
    python benchmarks/search_selfjoin.py --sizes 2000,5000        # a quick check
    python benchmarks/search_selfjoin.py --baseline-fraction 0.25 # dense baseline timed on 25% of its row blocks
                                                                  # at N >= 100k and extrapolated ('~' in the table)
    python benchmarks/search_selfjoin.py --methods project_exact,project_torch --sizes 5000   # + the torch backend

Threads: faiss and torch use all cores (set OMP_NUM_THREADS to pin); the sgemm rate is measured with the same.

On a GPU (``--device cuda``, in one process, the paper's 8M-image slice at the end):

    python benchmarks/search_selfjoin.py --device cuda --sizes 1000000,8000000 --time-budget 300

Rows: the project's ``threshold_pairs`` with ``backend="auto"`` (faiss on the GPU when this faiss build has GPU
support, else the torch backend: float16 tiles rescored in float32) against the paper code's dense float32
``torch.mm`` blocks on the same GPU, timed on ``--gpu-baseline-fraction`` of its row blocks and extrapolated. The
project's pairs on those rows are counted against the baseline's as a check. A size whose predicted time (from the
previous size: the join ∝ N², the data ∝ N) exceeds what is left of ``--time-budget`` is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

DIM = 512


def synthetic(n: int, seed: int = 0, dup_fraction: float = 0.02) -> np.ndarray:
    """N unit vectors: random directions, plus ``dup_fraction`` of rows that are near copies of another row
    (cosine ≈ 0.75–0.98), so the threshold graph has real edges."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    n_dup = int(n * dup_fraction)
    src = rng.integers(0, n, n_dup)
    dst = rng.choice(n, n_dup, replace=False)
    noise = rng.uniform(0.2, 0.9, (n_dup, 1)).astype(np.float32)
    x[dst] = x[src] + noise * rng.standard_normal((n_dup, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def project_exact(x: np.ndarray, threshold: float, backend: str = "faiss") -> int:
    from copying_study.search import threshold_pairs

    i, _, _ = threshold_pairs(x, threshold, backend=backend)
    return int(i.size)


def dense_torch(x: np.ndarray, threshold: float, block: int = 2048, fraction: float = 1.0) -> tuple[int, float]:
    """The paper code's approach: dense similarity blocks with torch.mm, then a threshold (pairs i < j kept).

    ``fraction`` < 1 runs only that share of the row blocks, evenly spaced (every block costs the same: block × N × d
    products), for a timing to be extrapolated; the pair count is then of those blocks only.
    Returns (pairs found, share of the row blocks that ran)."""
    import torch

    t = torch.from_numpy(x)
    starts = all_starts = list(range(0, len(x), block))
    if fraction < 1.0:
        keep = max(1, round(len(starts) * fraction))
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, keep).round().astype(int)]
    found = 0
    for start in starts:
        sims = t[start : start + block] @ t.T
        rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
        found += int(((rows + start) < cols).sum())
    return found, len(starts) / len(all_starts)


def sgemm_rate(n: int) -> dict[str, float]:
    """GFLOP/s of float32 matmul (4096×512)·(512×n) with numpy and torch, best of 3."""
    import torch

    rng = np.random.default_rng(1)
    a = rng.standard_normal((4096, DIM), dtype=np.float32)
    b = rng.standard_normal((min(n, 50000), DIM), dtype=np.float32)
    out = {}
    for name, mm in (("numpy", lambda: a @ b.T), ("torch", lambda: torch.from_numpy(a) @ torch.from_numpy(b).T)):
        mm()
        best = min(_timed(mm) for _ in range(3))
        out[name] = 2 * a.shape[0] * b.shape[0] * DIM / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class RssSampler:
    """Peak of the process's current RSS (``/proc/self/statm``) while running, sampled every 5 ms: the method's own
    working memory is that peak minus the RSS before it started (imports and the input are already resident)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.start = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def worker(method: str, n: int, threshold: float, fraction: float = 1.0) -> dict:
    import torch  # noqa: F401  (both methods' libraries resident before the measurement)

    import copying_study.search  # noqa: F401

    x = synthetic(n)
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        if method == "dense_torch":
            pairs, measured = dense_torch(x, threshold, fraction=fraction)
        else:
            pairs, measured = project_exact(x, threshold, "torch" if method == "project_torch" else "faiss"), 1.0
        seconds = (time.perf_counter() - t0) / measured  # extrapolated to every row block when measured < 1
    return {"method": method, "n": n, "seconds": seconds, "pairs": pairs, "measured_share": measured,
            "work_mb": (sampler.peak - sampler.start) / 2**20, "input_mb": x.nbytes / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gflops": 2.0 * n * n * DIM / seconds / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--methods", default="project_exact,dense_torch")
    parser.add_argument("--baseline-fraction", type=float, default=1.0,
                        help="at N >= --baseline-sample-from, time only this share of the dense baseline's row blocks "
                             "and extrapolate (marked '~' in the table)")
    parser.add_argument("--baseline-sample-from", type=int, default=100_000)
    parser.add_argument("--device", default="cpu", help="cpu (the table above) or cuda (the GPU table)")
    parser.add_argument("--in-process", action="store_true",
                        help="the GPU table's code on --device (implied by cuda; on cpu: a smoke test of it)")
    parser.add_argument("--gpu-baseline-fraction", type=float, default=None,
                        help="share of the dense baseline's row blocks timed on the GPU (default: ~80 blocks)")
    parser.add_argument("--time-budget", type=float, default=None, help="GPU: seconds for all sizes")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") or args.in_process:
        gpu_main(args)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threshold, args.baseline_fraction)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rate = sgemm_rate(max(sizes))
    peak = max(rate.values())
    print(f"machine: {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"sgemm 4096x{DIM} . {DIM}xN: numpy {rate['numpy']:.1f} GFLOP/s, torch {rate['torch']:.1f} GFLOP/s")
    print(f"self-join at threshold {args.threshold}, d={DIM}, 2% planted near copies; each row a fresh process: "
          "work MB = the method's peak RSS above what was resident before it (libraries + input)")
    header = (f"{'N':>8} {'method':<15} {'seconds':>9} {'pairs':>14} {'input MB':>9} {'work MB':>8} "
              f"{'peak RSS MB':>12} {'GFLOP/s':>9} {'% sgemm':>8}")
    print(header)
    print("-" * len(header))
    for n in sizes:
        for method in args.methods.split(","):
            fraction = args.baseline_fraction if n >= args.baseline_sample_from else 1.0
            proc = subprocess.run([sys.executable, __file__, "--worker", method, str(n), "--threshold",
                                   str(args.threshold), "--baseline-fraction", str(fraction)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mark = "~" if r["measured_share"] < 1.0 else " "
            pairs = f"{r['pairs']}" if mark == " " else f"({100 * r['measured_share']:.0f}% rows)"
            print(f"{n:>8} {method:<15} {mark}{r['seconds']:>8.2f} {pairs:>14} {r['input_mb']:>9.0f} "
                  f"{r['work_mb']:>8.0f} {r['peak_rss_mb']:>12.0f} "
                  f"{r['gflops']:>9.1f} {100 * r['gflops'] / peak:>7.0f}%", flush=True)


# -- GPU ------------------------------------------------------------------------------------------------------


def synthetic_gpu(n: int, device, seed: int = 0, dup_fraction: float = 0.02):
    """``synthetic`` drawn on the GPU (an 8M × 512 float32 array takes seconds there): the same recipe, torch's
    generator instead of numpy's."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, device=device)
    n_dup = int(n * dup_fraction)
    src = torch.randint(0, n, (n_dup,), generator=g, device=device)
    dst = torch.randperm(n, generator=g, device=device)[:n_dup]
    noise = 0.2 + 0.7 * torch.rand(n_dup, 1, generator=g, device=device)
    x[dst] = x[src] + noise * torch.randn(n_dup, DIM, generator=g, device=device)
    return x / x.norm(dim=1, keepdim=True)


def dense_gpu(x, threshold: float, fraction: float) -> tuple[int, list[tuple[int, int]], float, float]:
    """The paper code's dense float32 blocks on the GPU: pairs found on the timed row blocks, those blocks' row
    ranges, the share of blocks timed, and the seconds extrapolated to all blocks."""
    import torch

    n = x.shape[0]
    free = torch.cuda.mem_get_info(x.device)[0] if x.device.type == "cuda" else 4 << 30
    block = int(max(256, min(8192, free // 4 // (n * 5) // 256 * 256)))  # the float32 block and its mask
    starts = list(range(0, n, block))
    keep = max(1, round(len(starts) * fraction))
    timed = [starts[i] for i in np.linspace(0, len(starts) - 1, keep).round().astype(int)]
    found = 0
    sync(x.device)
    t0 = time.perf_counter()
    for start in timed:
        sims = x[start : start + block] @ x.T
        rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
        found += int(((rows + start) < cols).sum())
    sync(x.device)
    share = len(timed) / len(starts)
    return found, [(s, min(s + block, n)) for s in timed], share, (time.perf_counter() - t0) / share


def empty_cache(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_main(args) -> None:
    import torch

    from copying_study.search import gpu_available, threshold_pairs
    from copying_study.utils.device import describe_device

    device = torch.device(args.device)
    start_all = time.perf_counter()
    faiss_gpu = gpu_available()
    consequence = ": the project runs its torch backend" if device.type == "cuda" else " (a CPU run: faiss on the CPU)"
    print(f"# self-join on {describe_device(device)}, torch {torch.__version__}; faiss with GPU support: "
          f"{'yes' if faiss_gpu else 'NO (this faiss build has none)' + consequence}")
    print(f"# threshold {args.threshold}, d={DIM}, 2% planted near copies; baseline = dense float32 torch.mm "
          "blocks (the paper code's method) timed on a share of its row blocks and extrapolated ('~')")
    print("| N | method | seconds | pairs | equivalent TFLOP/s (2·N²·d / s) | check |")
    print("|---|---|---|---|---|---|")
    last: tuple[int, float, float] | None = None  # N, seconds ∝ N² (the join), other seconds (data, baseline)
    for n in (int(v) for v in args.sizes.split(",")):
        left = (args.time_budget - (time.perf_counter() - start_all)) if args.time_budget else None
        if last and left is not None:
            # the join grows as N²; making and copying the data as N; the timed baseline blocks stay about constant
            predicted = last[1] * (n / last[0]) ** 2 + last[2] * n / last[0]
            if predicted > left:
                print(f"| {n:,} | (skipped) | predicted {predicted:.0f} s > {left:.0f} s left of the budget | | | |",
                      flush=True)
                continue
        t0 = time.perf_counter()
        xg = synthetic_gpu(n, device)
        x = xg.cpu().numpy()
        make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        i, _, _ = threshold_pairs(x, args.threshold, backend="auto", chunk_size=16384)
        ours = time.perf_counter() - t0
        backend = "faiss-gpu (flat)" if faiss_gpu else ("torch backend" if device.type == "cuda" else "faiss, CPU")
        empty_cache(device)
        fraction = args.gpu_baseline_fraction or min(1.0, 80 / max(1, n // 512))
        base_pairs, ranges, share, base_s = dense_gpu(xg, args.threshold, fraction)
        del xg
        empty_cache(device)
        on_rows = sum(int(((i >= a) & (i < b)).sum()) for a, b in ranges)
        check = (f"pairs on the baseline's {100 * share:.1f}% rows: project {on_rows}, baseline {base_pairs}"
                 + ("" if on_rows == base_pairs else " (DIFFER)"))
        flops = 2.0 * n * n * DIM
        print(f"| {n:,} | project `threshold_pairs` ({backend}) | {ours:.1f} | {i.size:,} | {flops / ours / 1e12:.3g} "
              f"| data made in {make_s:.1f} s |")
        print(f"| {n:,} | dense float32 torch.mm blocks (paper code) | ~{base_s:.1f} | ({100 * share:.1f}% rows) | "
              f"{flops / base_s / 1e12:.3g} | speed-up {base_s / ours:.1f}x; {check} |", flush=True)
        last = (n, ours, make_s + base_s * share)


if __name__ == "__main__":
    main()
