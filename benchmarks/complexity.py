"""Cost of the complexity_analysis stage: measuring images and bootstrapping correlations.

Prints a table: images/s for the three measures at each image size (decode + resize/crop + entropy + JPEG + TV, from
PNG bytes of random-content images), and the seconds of ``correlate`` (Pearson + Spearman + bootstrap) per measure
for n generations and n_boot resamples.

    python benchmarks/complexity.py              # full table (run on a quiet machine)
    python benchmarks/complexity.py --small      # a quick check that the script works
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from PIL import Image

from copying_study.metrics.complexity import complexity_measures, prepare
from copying_study.metrics.correlation import correlate
from copying_study.utils.images import encode_png


def images(count: int, source_size: int, seed: int = 0) -> list[bytes]:
    """PNG bytes of smooth-to-busy images: low-resolution noise upsampled by a random factor."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        cells = int(rng.integers(2, source_size // 2))
        small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        out.append(encode_png(Image.fromarray(small).resize((source_size, source_size), Image.Resampling.BILINEAR)))
    return out


def time_measures(count: int, size: int) -> float:
    data = images(count, source_size=int(size * 1.25))
    start = time.perf_counter()
    for item in data:
        complexity_measures(prepare(item, size, "bilinear"), 90)
    return count / (time.perf_counter() - start)


def time_bootstrap(n: int, n_boot: int) -> float:
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    y = -0.3 * x + rng.normal(size=n)
    start = time.perf_counter()
    correlate(x, y, n_boot=n_boot, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script runs")
    args = parser.parse_args()
    counts, sizes = (20, (32, 64)) if args.small else (500, (32, 64, 224, 512))
    boots = [(100, 200)] if args.small else [(1000, 1000), (10000, 1000), (10000, 10000)]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'image size':>10} | {'images/s':>9}")
    for size in sizes:
        print(f"{size:>10} | {time_measures(counts, size):>9.1f}")
    print(f"\n{'n rows':>7} | {'n_boot':>7} | {'s per measure':>13}")
    for n, n_boot in boots:
        print(f"{n:>7} | {n_boot:>7} | {time_bootstrap(n, n_boot):>13.2f}")


if __name__ == "__main__":
    main()
