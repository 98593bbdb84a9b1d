"""Random-weight models with Stable Diffusion 2.1's architecture, for speed measurements without any download.

Speed does not depend on the values of the weights, so the paper's model can be timed with a model of the same
shapes: the configurations below are copied from the public ``config.json`` files of
``stabilityai/stable-diffusion-2-1`` (UNet 865.9M parameters, its ``AutoencoderKL`` 83.7M, the OpenCLIP-H text
tower as a ``CLIPTextModel`` 340.4M, a DDIM scheduler with v-prediction). The tokenizer is the project's CLIP-format
BPE trained in code on the given captions (:func:`copying_study.diffusion.models.train_caption_tokenizer`), so
nothing is fetched.

``size="tiny"`` builds the same family through the same code with every width and depth shrunk (seconds on a CPU),
so that tests exercise exactly what the full-size benchmarks run. Used only by ``benchmarks/`` and tests: these
models have random weights and generate noise.

>>> pipe = build_sd21_pipeline(size="tiny")                # a StableDiffusionPipeline
>>> folder = save_sd21_pipeline("/tmp/sd21", size="full")  # diffusers layout: load_pipeline(folder) reads it
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from copying_study.diffusion.models import train_caption_tokenizer
from copying_study.utils.seeding import derive_seed

SIZES = ("full", "tiny")

# stabilityai/stable-diffusion-2-1, unet/config.json (the 768-px v-prediction model the paper finetunes).
SD21_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],  # diffusers' legacy name: the number of heads per level (64-d heads)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-2-1, vae/config.json (scaling_factor is diffusers' default for it, 0.18215).
SD21_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# stabilityai/stable-diffusion-2-1, text_encoder/config.json: OpenCLIP ViT-H/14's text tower (the penultimate of
# its 24 layers, hence 23) as a transformers CLIPTextModel. Token ids are set from the tokenizer when built.
SD21_TEXT: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
}

# stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json (training derives its DDPM twin from it).
SD21_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# The tiny member of the family: only widths and depths change (same block types, attention layout, latent
# factor 8, 4 latent channels, 77 tokens, scheduler).
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "unet": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": [1, 2, 2, 2], "layers_per_block": 1,
             "cross_attention_dim": 64, "norm_num_groups": 8, "sample_size": 8},
    "vae": {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64},
    "text": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2,
             "projection_dim": 64, "vocab_size": 1024},
}

# Captions the tokenizer is trained on when none are given (its merges only matter for what the prompts contain).
DEFAULT_CAPTIONS = tuple(
    f"a {c} {s} on a {b} background" for c in ("red", "green", "blue", "yellow", "purple")
    for s in ("circle", "square", "triangle", "star") for b in ("white", "dark", "striped")
)


def sd21_configs(size: str = "full") -> dict[str, dict[str, Any]]:
    """The component configurations (``unet``, ``vae``, ``text``, ``scheduler``) of the ``size`` member."""
    if size not in SIZES:
        raise ValueError(f"reference model size must be one of {', '.join(SIZES)}, got {size!r}")
    configs = {"unet": SD21_UNET, "vae": SD21_VAE, "text": SD21_TEXT, "scheduler": SD21_SCHEDULER}
    configs = copy.deepcopy(configs)
    if size == "tiny":
        for part, overrides in TINY_OVERRIDES.items():
            configs[part].update(copy.deepcopy(overrides))
    return configs


def build_sd21_pipeline(size: str = "full", seed: int = 0, captions: Sequence[str] | None = None):
    """A ``StableDiffusionPipeline`` with Stable Diffusion 2.1's architecture (``size="full"``) or its tiny
    member, random weights drawn deterministically from ``seed``, float32 on the CPU, no safety checker."""
    configs = sd21_configs(size)
    text_cfg = configs["text"]
    tokenizer = train_caption_tokenizer(captions or DEFAULT_CAPTIONS, vocab_size=int(text_cfg["vocab_size"]),
                                        max_length=int(text_cfg["max_position_embeddings"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "reference_shapes", "sd21", size) % (2**63))
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **text_cfg, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        vae = AutoencoderKL(**configs["vae"])
        unet = UNet2DConditionModel(**configs["unet"])
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**configs["scheduler"]), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )


def save_sd21_pipeline(folder: str | Path, size: str = "full", seed: int = 0,
                       captions: Sequence[str] | None = None) -> Path:
    """Build (:func:`build_sd21_pipeline`) and save in diffusers' layout (``save_pretrained``, safetensors, float32)
    so that :func:`copying_study.diffusion.models.load_pipeline` and ``DiffusersPipelineDataset`` read it."""
    folder = Path(folder)
    build_sd21_pipeline(size, seed, captions).save_pretrained(folder, safe_serialization=True)
    return folder


def parameter_counts(pipe) -> dict[str, int]:
    """Parameters of each trainable component of a pipeline."""
    return {name: int(sum(p.numel() for p in getattr(pipe, name).parameters()))
            for name in ("unet", "vae", "text_encoder")}
