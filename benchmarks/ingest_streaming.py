"""Streaming ingest benchmark: N photo-like JPEGs in an imagefolder → ``training_set`` parquet, peak memory.

Creates N smooth, photo-like synthetic images (random colour fields, blobs and gradients, JPEG q90, 320×256 by
default) with a ``metadata.csv`` in a temporary folder, then ingests them in a *fresh child process* exactly as the
pipeline does (``copying_study.data.ingest.ingest`` + ``ImageTableDataset.save``) and prints one table row:
N, seconds, images/s, the child's peak RSS and the size of the written table.

    python benchmarks/ingest_streaming.py                 # the full run: 20,000 images at 256 px
    python benchmarks/ingest_streaming.py --n 500         # a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random image: a colour gradient plus a few soft blobs and a little sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx /= width
    yy /= height
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = (1 - t) * c0 + t * c1
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - weight) + weight * rng.uniform(0, 255, 3)
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_folder(folder: Path, n: int, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(folder / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "text"])
        for i in range(n):
            name = f"{i // 1000:03d}/img_{i:06d}.jpg"
            (folder / name).parent.mkdir(exist_ok=True)
            photo_like(rng, width, height).save(folder / name, quality=90)
            writer.writerow([name, f"a synthetic photo number {i}"])


def child(folder: str, out: str, resolution: int, chunk_rows: int) -> None:
    """Ingest ``folder`` into ``out`` and print a JSON line with the timings and this process's peak RSS."""
    from copying_study.data.ingest import ingest
    from copying_study.datasets.image_table import ImageTableDataset

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = ingest({"source": "imagefolder", "path": folder, "resolution": resolution, "chunk_rows": chunk_rows}, 0)
    ImageTableDataset(out).save(result.table)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "n_images": result.metrics["n_images"],
                      "n_rejected": result.metrics["n_rejected"], "peak_rss_kb": peak, "base_rss_kb": base_rss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="number of images (default 20000)")
    parser.add_argument("--resolution", type=int, default=256, help="ingest.resolution (default 256)")
    parser.add_argument("--width", type=int, default=320, help="source image width (default 320)")
    parser.add_argument("--height", type=int, default=256, help="source image height (default 256)")
    parser.add_argument("--chunk-rows", type=int, default=256, help="ingest.chunk_rows (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.resolution, args.chunk_rows)
        return
    with tempfile.TemporaryDirectory(prefix="ingest_bench_") as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "training_set.parquet"
        folder.mkdir()
        t0 = time.perf_counter()
        make_folder(folder, args.n, args.width, args.height, args.seed)
        made = time.perf_counter() - t0
        src_mb = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / 2**20
        cmd = [sys.executable, __file__, "--resolution", str(args.resolution), "--chunk-rows", str(args.chunk_rows),
               "--child", str(folder), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "COPYING_STUDY_NO_PROGRESS": "1"})
        if proc.returncode != 0:
            sys.exit(f"ingest child failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out_mb = out.stat().st_size / 2**20
    print(f"(generated {args.n} source images, {src_mb:.0f} MB of JPEG, in {made:.0f} s)")
    header = ("N", "source px", "resolution", "seconds", "images/s", "peak RSS MB", "RSS after imports MB",
              "table MB", "rejected")
    row = (res["n_images"], f"{args.width}x{args.height}", args.resolution, f"{res['seconds']:.1f}",
           f"{res['n_images'] / res['seconds']:.0f}", f"{res['peak_rss_kb'] / 1024:.0f}",
           f"{res['base_rss_kb'] / 1024:.0f}", f"{out_mb:.0f}", res["n_rejected"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
