"""Shared settings for the finetune tests: a very small tiny model (16 px, 8x8x12 latents) that trains in seconds."""

from __future__ import annotations

from typing import Any

from copying_study.schemas import FinetuneParams

TEST_TINY: dict[str, Any] = {
    "latent_factor": 2,
    "unet_channels": [32, 32],
    "unet_attention_levels": [False, True],
    "unet_head_dim": 16,
    "text_hidden_size": 32,
    "text_layers": 1,
    "text_heads": 2,
    "text_max_length": 24,
    "tokenizer_vocab_size": 1024,
}


def small(**overrides: Any) -> FinetuneParams:
    """Validated settings of a few-step run of the test model (``overrides`` are ``finetune.*`` parameters)."""
    params: dict[str, Any] = {
        "tiny": TEST_TINY, "resolution": 16, "steps": 4, "batch_size": 4, "learning_rate": 1e-3,
        "lr_warmup_steps": 1, "sample_prompts": 0, "log_every": 1, "uncond_prob": 0.0, "mitigation_prob": 1.0,
        "duplication": "none", "ddf": 1.0, "train_text_encoder": False, "sample_every": 0, "checkpoint_every": 0,
    }
    params.update(overrides)
    return FinetuneParams.from_params(params)
