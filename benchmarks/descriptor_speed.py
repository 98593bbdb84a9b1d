"""Images/s of copy-descriptor extraction with SSCD's architecture, JPEG decoding included, against a plain loop.

Both sides read the same JPEG bytes (photo-like synthetic images, ``--image-size`` px, quality 90: the paper's
LAION slices are img2dataset shards at 256 px) and run the same TorchScript network (a random-weight model of
SSCD's shape: ResNet-50 trunk, GeM, 512-d projection, L2 norm; ``copying_study.descriptors.sscd_shape``) with
SSCD's preprocessing (short edge 288, ImageNet mean/std).

* **plain loop**: what a script usually does (SSCD's README, clip-retrieval's inference loop): a torch
  ``DataLoader`` whose worker processes decode and transform each image to a float32 tensor, batches moved to
  the device and fed to the float32 model.
* **project**: ``load_descriptor({"name": "sscd", ...}).encode(EncodedImages(jpegs))``, the dedup stage's call:
  decoding and resizing in ``workers`` threads, uint8 batches in pinned memory, normalisation on the device,
  float16 and channels-last on CUDA, results copied back asynchronously.

The table gives images/s, the speed-up, and the agreement of the two sets of descriptors (min cosine: float16 vs
float32). The issue's goal is >= 5,000 images/s on one H200 GPU.

    python benchmarks/descriptor_speed.py --n-images 32768 --batch-size 256          # GPU
    python benchmarks/descriptor_speed.py --size tiny --n-images 64 --image-size 64 --batch-size 16 --device cpu
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from copying_study.descriptors import EncodedImages, load_descriptor
from copying_study.descriptors.base import resolve_workers
from copying_study.descriptors.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from copying_study.descriptors.sscd_shape import SIZES, save_sscd_torchscript
from copying_study.utils.device import describe_device, pick_device

GOAL = 5000.0  # images/s on one H200 (issue 20)


def photo_like_jpegs(n_distinct: int, size: int, seed: int = 0) -> list[bytes]:
    """``n_distinct`` smooth random images (a colour gradient, soft blobs, sensor noise) as JPEG q90 bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n_distinct):
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = (1 - t) * rng.uniform(0, 255, 3) + t * rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(3, 8))):
            cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - blob) + blob * rng.uniform(0, 255, 3)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class JpegDataset(torch.utils.data.Dataset):
    """The plain loop's dataset: decode one JPEG and apply the float32 transform."""

    def __init__(self, data: list[bytes], transform: ImageTransform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.open(io.BytesIO(self.data[i])).convert("RGB"))


def plain_loop(data: list[bytes], model_path: Path, batch_size: int, workers: int, device: torch.device) -> np.ndarray:
    model = torch.jit.load(str(model_path), map_location=device).eval()
    loader = torch.utils.data.DataLoader(
        JpegDataset(data, ImageTransform(288, "short_edge", mean=IMAGENET_MEAN, std=IMAGENET_STD)),
        batch_size=batch_size, num_workers=workers, shuffle=False,
    )
    out = []
    with torch.inference_mode():
        for batch in loader:
            out.append(model(batch.to(device)).cpu())
    return torch.cat(out).numpy()


def project(data: list[bytes], model_path: Path, batch_size: int, workers: int | str, device: torch.device):
    d = load_descriptor({"name": "sscd", "path": str(model_path), "batch_size": batch_size, "workers": workers,
                         "device": str(device)})
    return d.encode(EncodedImages(data)), d


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="full", help="SSCD's shape, or its tiny member (tests)")
    ap.add_argument("--n-images", type=int, default=32768)
    ap.add_argument("--distinct", type=int, default=512, help="distinct JPEGs, repeated to --n-images")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", default="auto", help="decoding workers for both loops (auto: cores - 1, max 16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--warmup-images", type=int, default=None, help="default: 2 batches")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    # the same number of decoding workers for both loops: one per core but one, at most 16 (the project's "auto" on
    # CUDA), also on a CPU device, where the project's own default would be none
    workers = resolve_workers("auto", torch.device("cuda")) if args.workers == "auto" else int(args.workers)
    distinct = photo_like_jpegs(min(args.distinct, args.n_images), args.image_size)
    data = [distinct[i % len(distinct)] for i in range(args.n_images)]
    warm = data[: args.warmup_images or 2 * args.batch_size]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = save_sscd_torchscript(Path(tmp) / "sscd_shape.torchscript.pt", size=args.size, seed=0)
        project(warm, model_path, args.batch_size, workers, device)
        ours_s, (ours_x, desc) = timed(lambda: project(data, model_path, args.batch_size, workers, device), device)
        try:  # the baseline's worker processes pass float32 batches through /dev/shm, which may be small
            plain_loop(warm, model_path, args.batch_size, workers, device)
            plain_s, plain_x = timed(lambda: plain_loop(data, model_path, args.batch_size, workers, device), device)
            baseline_error = None
        except Exception as exc:  # reported in the table; the project's row stands on its own
            plain_s, plain_x, baseline_error = float("nan"), None, f"{type(exc).__name__}: {exc}"[:300]
    n = len(data)
    cos = (np.einsum("nd,nd->n", plain_x / np.linalg.norm(plain_x, axis=1, keepdims=True), ours_x)
           if plain_x is not None else np.full(1, np.nan))
    result = {"plain_img_s": n / plain_s, "project_img_s": n / ours_s, "speedup": plain_s / ours_s,
              "min_cosine": float(cos.min()), "device": describe_device(device), "baseline_error": baseline_error}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# descriptor extraction: SSCD shape ({args.size}), {n} JPEGs of {args.image_size} px "
          f"({len(distinct)} distinct), short edge 288, batch {args.batch_size}, {workers} decoding workers, "
          f"{cores} cores, device {describe_device(device)}, torch {torch.__version__}")
    print("| loop | precision | seconds | images/s | speed-up |")
    print("|---|---|---|---|---|")
    if baseline_error:
        print(f"| plain DataLoader loop ({workers} worker processes, float32 tensors) | float32 | FAILED: "
              f"{baseline_error} | | |")
    else:
        print(f"| plain DataLoader loop ({workers} worker processes, float32 tensors) | float32 | {plain_s:.2f} | "
              f"{n / plain_s:,.0f} | 1.00 |")
    precision = "float16, channels-last" if desc.half else "float32"
    how = "uint8 + pinned, async copies" if device.type == "cuda" else "uint8"
    print(f"| project `SSCDDescriptor.encode` ({desc.workers} threads, {how}) | {precision} | "
          f"{ours_s:.2f} | {n / ours_s:,.0f} | **{plain_s / ours_s:.2f}** |")
    print(f"\nagreement: min cosine between the two loops' descriptors {cos.min():.5f} ({precision} vs float32)")
    if device.type == "cuda":
        verdict = "met" if n / ours_s >= GOAL else "NOT met"
        print(f"goal >= {GOAL:,.0f} images/s on one H200: {verdict} ({n / ours_s:,.0f} images/s)")
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
