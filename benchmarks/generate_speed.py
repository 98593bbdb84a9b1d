"""Images/s of the project's batched sampler against ``StableDiffusionPipeline`` and (``--sweep``) how close fewer
denoising steps come to a many-step reference, to choose the default step count.

All samplers use the same model, scheduler (``--scheduler``: DDIM, or DPM-Solver++ multistep as at the paper's
scale), steps, guidance, resolution, dtype and per-image seeds (each image's initial noise from its own CPU
generator, so all of them start from the same latents). Speed rows:

* diffusers ``StableDiffusionPipeline`` called with one prompt per call (the paper's code), timed on
  ``--per-prompt-images`` images (0 leaves it out);
* the same pipeline called with the same batch as the sampler (a list of prompts and of generators);
* the project's ``Sampler`` (on CUDA: UNet replayed from a CUDA graph), and on CUDA also with plain UNet calls.

Columns: wall seconds, images/s, speed-up over the batched pipeline, and the largest pixel difference from the
batched pipeline's images (the same computation; on CUDA bf16 kernels may round differently).

Small run (proves the script works; ~1 min on 2 CPU cores):
    python benchmarks/generate_speed.py --n-images 8 --steps 10 --batch-sizes 8
Full tables (tiny model on CPU; M = a finetuned folder data/06_models/finetuned_model/<version>/finetuned_model,
R = data/06_models/training_record.json/<version>/training_record.json, D = the train_descriptors .npz):
    python benchmarks/generate_speed.py --model M --record R --n-images 64 --steps 25 --batch-sizes 1,8,32,64
    python benchmarks/generate_speed.py --model M --record R --train-descriptors D --skip-speed --n-images 64 \
        --batch-sizes 32 --sweep 10,15,20,25,30,50,100 --reference-steps 100 [--guidance 3]
At the paper's scale on a GPU (a random-weight model of SD 2.1's shape, bf16, 256 px, 50 DPM-Solver steps):
    python benchmarks/generate_speed.py --size sd21 --device cuda --resolution 256 --n-images 32 --steps 50 \
        --scheduler dpm --batch-sizes 16 --per-prompt-images 4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from copying_study.diffusion.models import build_tiny_pipeline, load_pipeline
from copying_study.diffusion.sample import (
    ImageRequest,
    Sampler,
    image_seeds,
    make_scheduler,
    resolve_dtype,
    training_prompts,
)
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.seeding import torch_generator

CAPTIONS = [f"a {c} {s} on a {b} background" for c in ("red", "green", "blue", "yellow", "purple")
            for s in ("circle", "square", "triangle", "star") for b in ("white", "dark", "striped")]


def build(args, device: torch.device, dtype: torch.dtype):
    """The model: a folder (``--model``), a random-weight model of SD 2.1's shape or its tiny member (``--size
    sd21`` / ``sd21-tiny``), or the project's embedded tiny model; with ``--scheduler``'s scheduler."""
    if args.model:
        pipe = load_pipeline(args.model)
    elif args.size in ("sd21", "sd21-tiny"):
        from copying_study.diffusion.reference_shapes import build_sd21_pipeline

        pipe = build_sd21_pipeline("tiny" if args.size == "sd21-tiny" else "full", captions=CAPTIONS)
    else:
        pipe = build_tiny_pipeline(CAPTIONS, resolution=args.resolution or 32, seed=0)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def requests(n: int, record: str | None) -> list[ImageRequest]:
    """``n`` requests: training prompts drawn from a ``training_record.json`` as the stage does, else CAPTIONS."""
    if record:
        prompts = [p.text for p in training_prompts(json.loads(Path(record).read_text())["captions"], n, 0)]
    else:
        prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return [ImageRequest(p, s) for p, s in zip(prompts, image_seeds(0, n), strict=True)]


def copy_similarity(path: str | None):
    """A function images -> p95 of top-1 similarity to the training descriptors at ``path`` (None without)."""
    if not path:
        return None
    from copying_study.datasets import DescriptorsDataset
    from copying_study.descriptors import descriptor_from_meta

    train = DescriptorsDataset(path).load()
    descriptor = descriptor_from_meta(train["meta"], device="cpu")
    return lambda images: float(np.percentile((descriptor.encode(images) @ train["embeddings"].T).max(1), 95))


def neighbour_diff(arr: np.ndarray) -> float:
    """Mean |difference| of horizontally and vertically adjacent pixel values (a noise level, 0-255)."""
    a = arr.astype(np.float64)
    return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=2)).mean()) / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_pipeline(pipe, reqs, args, resolution: int, device, per_call: int) -> tuple[float, list]:
    """``StableDiffusionPipeline.__call__`` on ``per_call`` requests at a time, each image with its own seeded CPU
    generator (so its initial noise is the sampler's); after one warm-up call."""

    def call(batch):
        return pipe([r.prompt for r in batch], num_inference_steps=args.steps, guidance_scale=args.guidance,
                    height=resolution, width=resolution, generator=[torch_generator(r.seed) for r in batch]).images

    call(reqs[:per_call])  # warm-up
    sync(device)
    start = time.perf_counter()
    images = [im for k in range(0, len(reqs), per_call) for im in call(reqs[k:k + per_call])]
    sync(device)
    return time.perf_counter() - start, images


def batched(pipe, reqs, steps: int, guidance: float, batch_size: int, device, dtype: str, scheduler: str = "ddim",
            cuda_graph: bool | str = "auto") -> tuple[float, float, list, Sampler]:
    """Wall and process-CPU seconds of the project's sampler on ``reqs`` (after a warm-up batch, which also captures
    the CUDA graph), its images and the sampler."""
    sampler = Sampler(pipe, device=device, steps=steps, guidance=guidance, batch_size=batch_size, dtype=dtype,
                      scheduler=scheduler, cuda_graph=cuda_graph)
    sampler.generate_batch(reqs[:1])  # warm-up
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    images = sampler.generate(reqs)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, images, sampler


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a diffusers folder (default: a fresh model of --size)")
    ap.add_argument("--size", choices=("tiny", "sd21", "sd21-tiny"), default="tiny",
                    help="tiny: the project's embedded model; sd21: Stable Diffusion 2.1's shape (random weights)")
    ap.add_argument("--scheduler", default="ddim", help="ddim | dpm | ddpm | euler | euler_a")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto = bf16 on CUDA, float32 on CPU")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--batch-sizes", default="16")
    ap.add_argument("--per-prompt-images", type=int, default=None,
                    help="images for the one-prompt-per-call row (default: all; 0: leave it out)")
    ap.add_argument("--sweep", default="", help="comma-separated step counts to compare with --reference-steps")
    ap.add_argument("--reference-steps", type=int, default=100)
    ap.add_argument("--record", default=None, help="training_record.json: use its captions as prompts")
    ap.add_argument("--train-descriptors", default=None,
                    help="train_descriptors .npz: the sweep also reports the p95 top-1 similarity to them")
    ap.add_argument("--skip-speed", action="store_true", help="only the sweep")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipe = build(args, device, dtype)
    resolution = args.resolution or int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    reqs = requests(args.n_images, args.record)
    model = args.model or {"tiny": "the embedded tiny model", "sd21": "Stable Diffusion 2.1's shape, random weights",
                           "sd21-tiny": "the tiny member of SD 2.1's family"}[args.size]
    print(f"# generate: device {describe_device(device)}, dtype {str(dtype).replace('torch.', '')}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, model {model}, {resolution} px, {args.steps} "
          f"{args.scheduler} steps, guidance {args.guidance}, {args.n_images} images")

    if not args.skip_speed:
        speed_table(pipe, reqs, args, resolution, device)
    if args.sweep:
        sweep_table(pipe, reqs, args, device)
    sys.stdout.flush()


def max_diff(a: list, b: list) -> int:
    return int(max(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max() for x, y in zip(a, b, strict=True)))


def speed_table(pipe, reqs, args, resolution: int, device: torch.device) -> None:
    n = len(reqs)
    print("| sampler | batch | images | wall s | images/s | speed-up over the batched pipeline | max pixel diff |")
    print("|---|---|---|---|---|---|---|")
    per_prompt = n if args.per_prompt_images is None else min(args.per_prompt_images, n)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        base_s, base_imgs = plain_pipeline(pipe, reqs, args, resolution, device, per_call=bs)
        if per_prompt:
            one_s, _ = plain_pipeline(pipe, reqs[:per_prompt], args, resolution, device, per_call=1)
            print(f"| diffusers `StableDiffusionPipeline`, one prompt per call (paper code) | 1 | {per_prompt} | "
                  f"{one_s:.2f} | {per_prompt / one_s:.2f} | {(per_prompt / one_s) / (n / base_s):.2f} | |")
        print(f"| diffusers `StableDiffusionPipeline`, the same batch per call | {bs} | {n} | {base_s:.2f} | "
              f"{n / base_s:.2f} | 1.00 | 0 |")
        variants = [("auto", "project `Sampler`" + (" (CUDA graph)" if device.type == "cuda" else ""))]
        if device.type == "cuda":
            variants.append((False, "project `Sampler`, plain UNet calls"))
        for graph, label in variants:
            secs, _, imgs, sampler = batched(pipe, reqs, args.steps, args.guidance, bs, device, args.dtype,
                                             args.scheduler, graph)
            note = "" if graph is False or device.type != "cuda" else f" [cuda_graph: {sampler.info()['cuda_graph']}]"
            print(f"| {label}{note} | {bs} | {n} | {secs:.2f} | {n / secs:.2f} | **{base_s / secs:.2f}** | "
                  f"{max_diff(imgs, base_imgs)} |", flush=True)


def sweep_table(pipe, reqs, args, device: torch.device) -> None:
    bs = int(args.batch_sizes.split(",")[-1])
    similarity = copy_similarity(args.train_descriptors)
    _, _, ref, _ = batched(pipe, reqs, args.reference_steps, args.guidance, bs, device, args.dtype, args.scheduler)
    ref_arr = np.stack([np.asarray(i) for i in ref])
    print(f"\n| steps | CPU s/image | mean abs diff vs {args.reference_steps} steps (0-255) | PSNR dB | "
          "neighbour diff | p95 top-1 similarity |")
    print("|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.sweep.split(",")):
        _, cpu, imgs, _ = batched(pipe, reqs, steps, args.guidance, bs, device, args.dtype, args.scheduler)
        arr = np.stack([np.asarray(i) for i in imgs])
        diff = np.abs(arr.astype(np.int16) - ref_arr).mean()
        sim = f"{similarity(imgs):.3f}" if similarity else "-"
        print(f"| {steps} | {cpu / len(reqs):.3f} | {diff:.2f} | {psnr(arr, ref_arr):.1f} | "
              f"{neighbour_diff(arr):.1f} | {sim} |", flush=True)


if __name__ == "__main__":
    main()
