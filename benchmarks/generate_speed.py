"""Images/s of the project's batched sampler against a plain one-prompt-at-a-time ``StableDiffusionPipeline`` call,
and (``--sweep``) how close fewer denoising steps come to a many-step reference, to choose the default step count.

Both samplers use the same model, scheduler (DDIM), steps, guidance, resolution and per-image seeds. Printed tables:

* speed: sampler, batch size, images, wall seconds, images/s and speed-up, and the same for process CPU seconds
  (which a busy machine distorts less);
* sweep: steps, seconds per image, mean |pixel difference| and PSNR against the ``--reference-steps`` images.

Small run (proves the script works; ~1 min on 2 CPU cores):
    python benchmarks/generate_speed.py --n-images 8 --steps 10 --batch-sizes 8
Full tables (tiny model on CPU; M = a finetuned folder data/06_models/finetuned_model/<version>/finetuned_model,
R = data/06_models/training_record.json/<version>/training_record.json, D = the train_descriptors .npz):
    python benchmarks/generate_speed.py --model M --record R --n-images 64 --steps 25 --batch-sizes 1,8,32,64
    python benchmarks/generate_speed.py --model M --record R --train-descriptors D --skip-speed --n-images 64 \
        --batch-sizes 32 --sweep 10,15,20,25,30,50,100 --reference-steps 100 [--guidance 3]
SD-2.1-sized UNet on a GPU (random weights; bf16 + SDPA), 256 px:
    python benchmarks/generate_speed.py --size sd21 --device cuda --resolution 256 --n-images 64 --steps 50 \
        --batch-sizes 16,32
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

from copying_study.diffusion.models import build_tiny_pipeline, load_pipeline, train_caption_tokenizer
from copying_study.diffusion.sample import ImageRequest, Sampler, image_seeds, resolve_dtype, training_prompts
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.seeding import torch_generator

CAPTIONS = [f"a {c} {s} on a {b} background" for c in ("red", "green", "blue", "yellow", "purple")
            for s in ("circle", "square", "triangle", "star") for b in ("white", "dark", "striped")]


def sd21_pipeline(resolution: int):
    """Random-weight components with Stable Diffusion 2.1's sizes (UNet 865M, OpenCLIP-H text encoder 340M)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=2048, max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                                        hidden_act="gelu", projection_dim=512))
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280),
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=resolution, scaling_factor=0.18215,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading")
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build(args, device: torch.device, dtype: torch.dtype):
    if args.size == "sd21":
        pipe = sd21_pipeline(args.resolution or 256)
    elif args.model:
        pipe = load_pipeline(args.model)
    else:
        pipe = build_tiny_pipeline(CAPTIONS, resolution=args.resolution or 32, seed=0)
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


def plain_pipeline(pipe, reqs, steps: int, guidance: float, resolution: int, device) -> tuple[float, list]:
    """One ``StableDiffusionPipeline.__call__`` per prompt (one image each), each with its own seeded generator."""
    pipe.set_progress_bar_config(disable=True)
    pipe(reqs[0].prompt, num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution,
         generator=torch_generator(reqs[0].seed))  # warm-up
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    images = [
        pipe(r.prompt, num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution,
             generator=torch_generator(r.seed)).images[0]
        for r in reqs
    ]
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, images


def batched(pipe, reqs, steps: int, guidance: float, batch_size: int, device, dtype: str) -> tuple[float, list]:
    sampler = Sampler(pipe, device=device, steps=steps, guidance=guidance, batch_size=batch_size, dtype=dtype)
    sampler.generate_batch(reqs[:1])  # warm-up
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    images = sampler.generate(reqs)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a diffusers folder (default: a fresh tiny model)")
    ap.add_argument("--size", choices=("tiny", "sd21"), default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto = bf16 on CUDA, float32 on CPU")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--batch-sizes", default="16")
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
    print(f"# device {describe_device(device)}, dtype {str(dtype).replace('torch.', '')}, torch threads "
          f"{torch.get_num_threads()}, model {args.model or args.size}, {resolution} px, {args.steps} DDIM steps, "
          f"guidance {args.guidance}, {args.n_images} images")

    if not args.skip_speed:
        speed_table(pipe, reqs, args, resolution, device)
    if args.sweep:
        sweep_table(pipe, reqs, args, device)
    sys.stdout.flush()


def speed_table(pipe, reqs, args, resolution: int, device: torch.device) -> None:
    plain_s, plain_cpu, _ = plain_pipeline(pipe, reqs, args.steps, args.guidance, resolution, device)
    print("| sampler | batch | images | wall s | images/s | speed-up (wall) | CPU s | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| diffusers StableDiffusionPipeline, one prompt per call | 1 | {len(reqs)} | {plain_s:.2f} | "
          f"{len(reqs) / plain_s:.2f} | 1.00 | {plain_cpu:.2f} | 1.00 |")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        secs, cpu, _ = batched(pipe, reqs, args.steps, args.guidance, bs, device, args.dtype)
        print(f"| copying_study Sampler | {bs} | {len(reqs)} | {secs:.2f} | {len(reqs) / secs:.2f} | "
              f"{plain_s / secs:.2f} | {cpu:.2f} | {plain_cpu / cpu:.2f} |")


def sweep_table(pipe, reqs, args, device: torch.device) -> None:
    bs = int(args.batch_sizes.split(",")[-1])
    similarity = copy_similarity(args.train_descriptors)
    _, _, ref = batched(pipe, reqs, args.reference_steps, args.guidance, bs, device, args.dtype)
    ref_arr = np.stack([np.asarray(i) for i in ref])
    print(f"\n| steps | CPU s/image | mean abs diff vs {args.reference_steps} steps (0-255) | PSNR dB | "
          "neighbour diff | p95 top-1 similarity |")
    print("|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.sweep.split(",")):
        _, cpu, imgs = batched(pipe, reqs, steps, args.guidance, bs, device, args.dtype)
        arr = np.stack([np.asarray(i) for i in imgs])
        diff = np.abs(arr.astype(np.int16) - ref_arr).mean()
        sim = f"{similarity(imgs):.3f}" if similarity else "-"
        print(f"| {steps} | {cpu / len(reqs):.3f} | {diff:.2f} | {psnr(arr, ref_arr):.1f} | "
              f"{neighbour_diff(arr):.1f} | {sim} |", flush=True)


if __name__ == "__main__":
    main()
