"""Random-weight models of Stable Diffusion 2.1's and SSCD's shapes: sizes, determinism, and that the project's real
loaders read what the builders save."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from copying_study.datasets import DiffusersPipelineDataset
from copying_study.descriptors import load_descriptor
from copying_study.descriptors.sscd_shape import build_sscd_model, save_sscd_torchscript
from copying_study.diffusion.models import describe_pipeline, load_pipeline, weights_checksum
from copying_study.diffusion.reference_shapes import (
    build_sd21_pipeline,
    parameter_counts,
    save_sd21_pipeline,
    sd21_configs,
)


def test_full_size_configs_have_stable_diffusion_2_1s_parameter_counts():
    """Counted on the meta device (no memory, no time): the configs the builder uses give SD 2.1's published
    sizes (UNet 865.9M, VAE 83.7M, OpenCLIP-H text tower 340.4M)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c = sd21_configs("full")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**c["unet"])
        vae = AutoencoderKL(**c["vae"])
        text = CLIPTextModel(CLIPTextConfig(**c["text"]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 865_910_724
    assert count(vae) == 83_653_863
    assert count(text) == 340_387_840
    assert (text.config.hidden_size, text.config.num_hidden_layers, text.config.num_attention_heads,
            text.config.intermediate_size, text.config.vocab_size, text.config.max_position_embeddings) == (
        1024, 23, 16, 4096, 49408, 77)
    assert c["scheduler"]["prediction_type"] == "v_prediction"


def test_tiny_member_changes_only_widths_and_depths():
    full, tiny = sd21_configs("full"), sd21_configs("tiny")
    for part in ("unet", "vae"):
        for key in ("down_block_types", "up_block_types", "in_channels", "latent_channels", "out_channels",
                    "use_linear_projection", "upcast_attention"):
            assert tiny[part].get(key) == full[part].get(key), (part, key)
    assert tiny["scheduler"] == full["scheduler"]
    assert tiny["text"]["max_position_embeddings"] == 77
    with pytest.raises(ValueError, match="size must be one of full, tiny"):
        sd21_configs("huge")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_sd21_pipeline(tmp_path_factory.mktemp("sd21") / "tiny", size="tiny", seed=0)


def test_tiny_sd21_is_seeded_and_loads_through_the_project_loaders(tiny_folder):
    built = build_sd21_pipeline("tiny", seed=0)
    other = build_sd21_pipeline("tiny", seed=1)
    assert weights_checksum(built.unet, built.text_encoder, built.vae) != weights_checksum(
        other.unet, other.text_encoder, other.vae)

    loaded = load_pipeline(str(tiny_folder), device="cpu")
    assert weights_checksum(loaded.unet, loaded.text_encoder, loaded.vae) == weights_checksum(
        built.unet, built.text_encoder, built.vae)
    info = describe_pipeline(loaded)
    assert (info["vae"], info["vae_scale_factor"], info["prediction_type"], info["max_length"]) == (
        "AutoencoderKL", 8, "v_prediction", 77)
    assert parameter_counts(loaded) == parameter_counts(built)

    via_dataset = DiffusersPipelineDataset(filepath=str(tiny_folder)).load()
    assert weights_checksum(via_dataset.unet) == weights_checksum(built.unet)
    assert via_dataset.tokenizer("a red star").input_ids == built.tokenizer("a red star").input_ids


def test_sscd_shape_full_size_and_tiny_torchscript_loads_as_the_sscd_descriptor(tmp_path):
    full = build_sscd_model("full")
    assert sum(p.numel() for p in full.parameters()) == 24_557_120  # ResNet-50 trunk 23.5M + 2048x512 projection
    path = save_sscd_torchscript(tmp_path / "sscd_tiny.torchscript.pt", size="tiny", seed=0)
    again = save_sscd_torchscript(tmp_path / "again.pt", size="tiny", seed=0)
    d = load_descriptor({"name": "sscd", "path": str(path), "device": "cpu", "size": 64})
    assert d.dim == 64
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(3)]
    x = d.encode(images)
    assert x.shape == (3, 64) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    d2 = load_descriptor({"name": "sscd", "path": str(again), "device": "cpu", "size": 64})
    assert d2.sha256 != "" and np.array_equal(d2.encode(images), x)  # same seed: same network, same vectors
