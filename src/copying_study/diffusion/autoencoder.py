"""A small KL autoencoder for the embedded base model: diffusers' ``AutoencoderKL`` (Stable Diffusion's own class),
sized for 32-px images and trained here, deterministically, on generic embedded scenes.

Stable Diffusion denoises in the latent space of a KL autoencoder; the tiny in-code model's fixed pixel-unshuffle
stand-in (:class:`copying_study.diffusion.models.PixelShuffleAutoencoder`) makes the UNet predict every pixel value,
which a model trained for minutes on a CPU does badly (its 32-px samples are colour noise). A learned encoder that
compresses 32×32×3 pixels to 8×8×4 latents, as SD's compresses 256×256×3 to 32×32×4, lets the UNet model the
image's content and leaves the pixels to a smooth decoder.

Training: mean squared reconstruction error plus ``kl_weight`` × the KL term (SD's VAE also uses a perceptual and a
GAN loss, which do not pay off at this size), AdamW, seeded batches; ``scaling_factor`` is then set to 1 / the
standard deviation of the training latents, the way SD's 0.18215 was chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from copying_study.utils.images import decode_image
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed, torch_generator

logger = logging.getLogger(__name__)

AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 64, 64],  # three levels: a downsampling factor of 4 (32 px -> 8x8 latents)
    "latent_channels": 4,
    "layers_per_block": 1,
    "steps": 1500,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "kl_weight": 1e-6,
}


def autoencoder_settings(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`AUTOENCODER_DEFAULTS` with ``overrides``; ``ValueError`` names an unknown key or a bad value."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(AUTOENCODER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown autoencoder key(s) {unknown}: allowed {sorted(AUTOENCODER_DEFAULTS)}")
    s = {**AUTOENCODER_DEFAULTS, **overrides}
    channels = [int(c) for c in s["block_out_channels"]]
    if not channels or any(c < 8 or c % 8 for c in channels):
        raise ValueError(f"autoencoder.block_out_channels must be multiples of 8, got {s['block_out_channels']}")
    for key in ("latent_channels", "layers_per_block", "steps", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"autoencoder.{key} must be >= 1, got {s[key]}")
    return {**s, "block_out_channels": channels}


def build_autoencoder(settings: Mapping[str, Any], resolution: int, seed: int):
    """A freshly initialised ``AutoencoderKL`` (seeded) of the given settings."""
    from diffusers import AutoencoderKL

    s = autoencoder_settings(settings)
    levels = len(s["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "autoencoder", "init") % (2**63))
        return AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(s["block_out_channels"]), layers_per_block=int(s["layers_per_block"]),
            latent_channels=int(s["latent_channels"]), norm_num_groups=min(32, min(s["block_out_channels"]) // 2),
            sample_size=int(resolution), mid_block_add_attention=False,
        )


def pixels(images: Sequence[bytes], resolution: int) -> torch.Tensor:
    """Encoded images → float32 ``[N, 3, R, R]`` in [-1, 1] (short edge resized and center-cropped)."""
    from copying_study.utils.images import resize_center_crop

    arrays = [np.asarray(resize_center_crop(decode_image(b), resolution), dtype=np.float32) for b in images]
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def train_autoencoder(images: Sequence[bytes], settings: Mapping[str, Any], resolution: int, seed: int,
                      device: torch.device | None = None) -> tuple[Any, dict[str, Any]]:
    """Train an ``AutoencoderKL`` on ``images`` (encoded bytes); returns it (eval mode, CPU, float32, with its
    ``scaling_factor`` set) and a record of the training (losses, reconstruction error, latent scale)."""
    s = autoencoder_settings(settings)
    device = device or torch.device("cpu")
    ae = build_autoencoder(s, resolution, seed).to(device)
    x = pixels(images, resolution)
    opt = torch.optim.AdamW(ae.parameters(), lr=float(s["learning_rate"]))
    history: list[list[float]] = []
    ae.train()
    for step in progress(range(int(s["steps"])), desc="autoencoder", unit="step"):
        gen = torch_generator(derive_seed(seed, "autoencoder", "step", step))
        idx = torch.randint(0, len(x), (int(s["batch_size"]),), generator=gen)
        batch = x[idx].to(device)
        posterior = ae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
        z = posterior.mean + posterior.std * noise
        recon = ae.decode(z).sample
        loss = F.mse_loss(recon, batch) + float(s["kl_weight"]) * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == int(s["steps"]):
            history.append([step + 1, float(loss.detach())])
    ae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = x[: min(len(x), 512)].to(device)
        latents = ae.encode(sample).latent_dist.mean
        mse = float(F.mse_loss(ae.decode(latents).sample.clamp(-1, 1), sample))
        std = float(latents.float().std())
    ae.register_to_config(scaling_factor=1.0 / std)
    record = {"settings": s, "loss_history": history, "reconstruction_mse": mse, "latent_std": std,
              "scaling_factor": 1.0 / std, "n_images": len(x)}
    logger.info("autoencoder: %d steps, reconstruction MSE %.4f (pixels in [-1, 1]), scaling factor %.4f",
                s["steps"], mse, 1.0 / std)
    return ae.to("cpu"), record
