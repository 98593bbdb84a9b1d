"""Fixtures of the generate tests: a very small randomly initialised Stable Diffusion pipeline (the project's own
tiny builder, shrunk further) and a recorder of what the UNet is fed."""

from __future__ import annotations

import pytest
import torch

from copying_study.diffusion.models import build_tiny_pipeline

CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]
SMALL = {
    "unet_channels": (16, 32),
    "unet_attention_levels": (False, True),
    "unet_head_dim": 8,
    "text_hidden_size": 32,
    "text_layers": 1,
    "text_heads": 2,
    "text_max_length": 16,
    "tokenizer_vocab_size": 600,
}


def small_pipeline(seed: int = 0, **sizes):
    """A 16 px tiny pipeline (fresh weights, deterministic from ``seed``); ``sizes`` override ``SMALL``."""
    return build_tiny_pipeline(CAPTIONS, resolution=16, seed=seed, **{**SMALL, **sizes})


@pytest.fixture(scope="module")
def pipe():
    return small_pipeline()


class UNetRecorder:
    """Records the ``encoder_hidden_states`` of every UNet call (a forward pre-hook; removed on ``close``)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[torch.Tensor] = []
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(kwargs["encoder_hidden_states"].detach().clone())

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def recorder(pipe):
    rec = UNetRecorder(pipe.unet)
    yield rec
    rec.close()
