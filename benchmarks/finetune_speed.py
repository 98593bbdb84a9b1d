"""Steps/s of the project's finetuning loop against a plain diffusers loop on the same model and settings.

The plain loop is what the paper's code (the diffusers text-to-image example) does: a DataLoader decodes and
transforms every image at every step in the main process (the example's default ``dataloader_num_workers=0``), the
frozen autoencoder encodes it again, the text encoder runs on the tokenised captions; in float32 (accelerate's
default ``mixed_precision=no``) and, on CUDA, also under bf16 autocast (``--mixed_precision bf16``). The project's
loop (``copying_study.diffusion.train.train``) encodes every image once and caches the latents (both flips), draws
batches by index, and uses bf16 autocast + SDPA + fused AdamW on CUDA.

Small run (seconds, proves it works):
    python benchmarks/finetune_speed.py --steps 3 --warmup 1 --images 64 --batch-size 8
Full table on the tiny default (2 idle CPU cores), then with a real (KL) autoencoder in the loop:
    OMP_NUM_THREADS=2 python benchmarks/finetune_speed.py --steps 40 --warmup 5
    OMP_NUM_THREADS=2 python benchmarks/finetune_speed.py --steps 10 --warmup 2 --sd-autoencoder --resolution 64
At the paper's settings (256 px, batch 16, UNet trained) with a random-weight model of Stable Diffusion 2.1's shape
(``copying_study.diffusion.reference_shapes``; ``--reference sd21`` builds it, or pass a folder saved by it or the
real weights as ``--base-model``):
    python benchmarks/finetune_speed.py --config conf/paper/parameters_finetune.yml --reference sd21 \
        --images 64 --steps 10 --warmup 3 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from copying_study.data.embedded import generate_embedded
from copying_study.diffusion.models import encode_prompts
from copying_study.diffusion.train import image_tensor, make_plan, prepare_model
from copying_study.diffusion.train import train as project_train
from copying_study.schemas import FinetuneParams
from copying_study.utils.device import describe_device, pick_device
from copying_study.utils.seeding import torch_generator


class ImageCaptionDataset(torch.utils.data.Dataset):
    """The plain loop's dataset: decode, resize + center crop, random flip and normalise at every access."""

    def __init__(self, images: list[bytes], captions: list[str], resolution: int, flip: bool, seed: int):
        self.images, self.captions, self.resolution, self.flip = images, captions, resolution, flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        x = image_tensor(self.images[i], self.resolution)
        if self.flip and self.rng.random() < 0.5:
            x = torch.flip(x, dims=[2])
        return x, self.captions[i]


def plain_loop(pipe, table, s: FinetuneParams, plan, steps: int, warmup: int, device: torch.device,
               amp: torch.dtype | None = None) -> float:
    """Seconds per step of the plain diffusers loop (no latent cache; float32, or ``amp`` autocast) after
    ``warmup`` steps."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    unet.train()
    te.train(s.train_text_encoder)
    te.requires_grad_(s.train_text_encoder)
    vae.requires_grad_(False)
    params = list(unet.parameters()) + (list(te.parameters()) if s.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    data = ImageCaptionDataset(list(table["image"]), plan.base_captions, s.resolution, s.random_flip, 0)
    loader = torch.utils.data.DataLoader(data, batch_size=s.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    gen = torch_generator(0)
    done, start = 0, None
    while done < steps + warmup:
        for pixels, captions in loader:
            if done == warmup:
                start = time.perf_counter()
            if done == steps + warmup:
                break
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                with torch.no_grad():
                    latents = vae.encode(pixels.to(device)).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn(latents.shape, generator=gen).to(device)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
                t = t.to(device)
                with torch.set_grad_enabled(s.train_text_encoder):
                    emb = encode_prompts(pipe, list(captions), device)
                noisy = noise_scheduler.add_noise(latents, noise, t)
                target = noise if noise_scheduler.config.prediction_type == "epsilon" \
                    else noise_scheduler.get_velocity(latents, noise, t)
                pred = unet(noisy, t, encoder_hidden_states=emb).sample
            loss = F.mse_loss(pred.float(), target.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
    _sync(device)
    return (time.perf_counter() - start) / steps


def project_loop(table, s: FinetuneParams, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step of the project's loop after ``warmup`` steps, and its one-off setup seconds."""
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def observer(batch, emb):
        if batch.step == 0:
            marks["first"] = time.perf_counter()
        if batch.step == warmup:
            _sync(device)
            marks["start"] = time.perf_counter()

    result = project_train(table, FinetuneParams.from_params({**s.to_dict(), "steps": steps + warmup}), 0, device,
                           observer=observer)
    end = marks["first"] + result.seconds  # result.seconds spans the whole loop
    return (end - marks["start"]) / steps, marks["first"] - t0


def with_sd_autoencoder(pipe, resolution: int, folder: str) -> str:
    """Save ``pipe`` with Stable Diffusion 2.1's autoencoder architecture (AutoencoderKL, 83M parameters, random
    weights, 8x downsampling to 4 channels) and a UNet of the same sizes re-shaped for its latents; returns the
    folder. This puts the real cost of encoding images (what the latent cache saves) into both loops."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=resolution,
    )
    config = {**pipe.unet.config, "in_channels": 4, "out_channels": 4, "sample_size": resolution // 8}
    unet = UNet2DConditionModel.from_config(config)
    pipe.vae, pipe.unet = vae, unet
    pipe.save_pretrained(folder)
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-model", default="tiny")
    ap.add_argument("--reference", choices=("sd21", "sd21-tiny"), default=None,
                    help="build a random-weight model of SD 2.1's shape (or its tiny member) and use it as base model")
    ap.add_argument("--config", default="conf/base/parameters_finetune.yml",
                    help="the finetune parameters to start from (tiny sizes, text encoder, resolution)")
    ap.add_argument("--images", type=int, default=272)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--baselines", default="auto",
                    help="plain-loop precisions, comma-separated: fp32, bf16 (auto: fp32 on CPU, fp32,bf16 on CUDA)")
    ap.add_argument("--sd-autoencoder", action="store_true",
                    help="replace the tiny model's pixel-unshuffle stand-in by SD 2.1's AutoencoderKL architecture")
    args = ap.parse_args(argv)

    import yaml

    params: dict[str, Any] = yaml.safe_load(open(args.config))["finetune"]
    params.update(base_model=args.base_model, sample_prompts=0, sample_every=0, checkpoint_every=0,
                  duplication="none", mitigation="none", uncond_prob=0.0)
    if args.resolution:
        params["resolution"] = args.resolution
    if args.batch_size:
        params["batch_size"] = args.batch_size
    device = pick_device(args.device)
    tmp = tempfile.TemporaryDirectory()
    model = args.base_model
    if args.reference:
        from copying_study.diffusion.reference_shapes import save_sd21_pipeline

        t0 = time.perf_counter()
        size = "tiny" if args.reference == "sd21-tiny" else "full"
        params["base_model"] = str(save_sd21_pipeline(Path(tmp.name) / args.reference, size=size))
        model = f"random-weight {args.reference} shape (built and saved in {time.perf_counter() - t0:.0f} s)"
    if params["base_model"] != "tiny":
        params.pop("tiny", None)
    s = FinetuneParams.from_params(params)
    table = generate_embedded(n_images=args.images, resolution=s.resolution, n_clusters=0, seed=0)
    plan = make_plan(table, s, 0)
    if args.sd_autoencoder:
        if args.base_model != "tiny":
            raise SystemExit("--sd-autoencoder only applies to --base-model tiny")
        folder = with_sd_autoencoder(prepare_model(s, plan, 0, torch.device("cpu")), s.resolution, tmp.name)
        s = FinetuneParams.from_params({**params, "base_model": folder, "tiny": {}})
        model += " + SD 2.1 autoencoder (random weights)"

    wanted = ("fp32,bf16" if device.type == "cuda" else "fp32") if args.baselines == "auto" else args.baselines
    precisions = {"fp32": None, "bf16": torch.bfloat16}
    plain: dict[str, float] = {}
    for name in wanted.split(","):
        if name not in precisions:
            raise SystemExit(f"--baselines: unknown precision {name!r} (fp32, bf16)")
        pipe = prepare_model(s, plan, 0, device)
        plain[name] = plain_loop(pipe, table, s, plan, args.steps, args.warmup, device, precisions[name])
        del pipe
        _free(device)
    ours, setup = project_loop(table, s, args.steps, args.warmup, device)
    _free(device)

    amp = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"# finetune: device {describe_device(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"model {model}, {s.resolution} px, batch {s.batch_size}, text encoder trained: {s.train_text_encoder}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps, {len(table)} images")
    print("| loop | s/step | steps/s | samples/s | project's speed-up over it |")
    print("|---|---|---|---|---|")
    for name, sec in plain.items():
        label = "float32" if name == "fp32" else "bf16 autocast"
        print(f"| plain diffusers-style ({label}, VAE encode every step, main-process data) | {sec:.4f} | "
              f"{1 / sec:.2f} | {s.batch_size / sec:.1f} | **{sec / ours:.2f}x** |")
    print(f"| project `train` (latent cache, {amp}) | {ours:.4f} | {1 / ours:.2f} | {s.batch_size / ours:.1f} | |")
    print(f"\nproject one-off setup (model load, latent encoding of {len(table)} images, weight checksums): "
          f"{setup:.1f} s")
    sys.stdout.flush()
    return {"plain_s_per_step": plain, "project_s_per_step": ours, "setup_s": setup}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
