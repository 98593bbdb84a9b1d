"""The model library: tiny pipeline, its tokenizer and autoencoder, save/load round trips, prompt encoding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from copying_study.datasets import DiffusersPipelineDataset
from copying_study.diffusion.models import (
    PixelShuffleAutoencoder,
    add_embedding_noise,
    build_tiny_pipeline,
    encode_prompts,
    load_pipeline,
    resolve_source,
    train_caption_tokenizer,
    weights_checksum,
)
from tests.finetune.helpers import TEST_TINY

CAPTIONS = ["a red circle on a plain blue background", "two green squares", "a yellow triangle, striped"]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(CAPTIONS, resolution=16, seed=0, **TEST_TINY)


def test_tokenizer_learns_caption_words_and_saves_in_clip_format(tmp_path):
    tok = train_caption_tokenizer(CAPTIONS * 3, vocab_size=1024, max_length=16)
    # whole caption words become single tokens with CLIP's end-of-word suffix; unseen text still tokenises
    assert tok.tokenize("A red circle") == ["a</w>", "red</w>", "circle</w>"]
    assert "".join(tok.tokenize("zebra 42")).replace("</w>", "") == "zebra42"
    ids = tok("red circle", padding="max_length", max_length=16).input_ids
    assert ids[0] == tok.bos_token_id and ids[3] == tok.eos_token_id and len(ids) == 16
    tok.save_pretrained(tmp_path)
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("two green squares").input_ids == tok("two green squares").input_ids
    with pytest.raises(ValueError, match="no non-empty captions"):
        train_caption_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="vocab_size must be >= 514"):
        train_caption_tokenizer(CAPTIONS, vocab_size=400)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_autoencoder_is_exactly_invertible(factor):
    vae = PixelShuffleAutoencoder(downscale_factor=factor)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, 3 * factor**2, 16 // factor, 16 // factor)
    assert torch.equal(vae.decode(z).sample, x)
    assert vae.config.latent_channels == 3 * factor**2
    assert 2 ** (len(vae.config.block_out_channels) - 1) == factor  # the pipeline's vae_scale_factor
    with pytest.raises(ValueError, match="power of two"):
        PixelShuffleAutoencoder(downscale_factor=3)


def test_tiny_pipeline_is_deterministic_from_its_seed():
    a = build_tiny_pipeline(CAPTIONS, resolution=16, seed=0, **TEST_TINY)
    b = build_tiny_pipeline(CAPTIONS, resolution=16, seed=0, **TEST_TINY)
    c = build_tiny_pipeline(CAPTIONS, resolution=16, seed=1, **TEST_TINY)
    assert weights_checksum(a.unet, a.text_encoder) == weights_checksum(b.unet, b.text_encoder)
    assert weights_checksum(a.unet) != weights_checksum(c.unet)
    with pytest.raises(ValueError, match="unknown tiny-model size"):
        build_tiny_pipeline(CAPTIONS, unet_chanels=[8])
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_pipeline(CAPTIONS, resolution=18, **TEST_TINY)


def test_save_pretrained_round_trip_through_diffusers_and_the_catalog_dataset(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    def sample(p):
        g = torch.Generator().manual_seed(3)
        return p("a red circle", num_inference_steps=3, generator=g, guidance_scale=1.0, output_type="np").images

    ds = DiffusersPipelineDataset(filepath=str(tmp_path / "model"))
    ds.save(pipe)
    loaded = ds.load()
    assert type(loaded.vae) is PixelShuffleAutoencoder
    assert weights_checksum(loaded.unet, loaded.text_encoder) == weights_checksum(pipe.unet, pipe.text_encoder)
    assert np.array_equal(sample(loaded), sample(pipe))
    assert loaded.tokenizer("two green squares").input_ids == pipe.tokenizer("two green squares").input_ids
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    assert again.unet.config.sample_size == 8 and sample(again).shape == (1, 16, 16, 3)
    via_loader = load_pipeline(str(tmp_path / "model"), device="cpu", dtype=torch.float32)
    assert weights_checksum(via_loader.unet) == weights_checksum(pipe.unet)


def test_a_fresh_process_needs_only_the_models_module_to_load_the_folder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    code = (
        "import copying_study.diffusion.models; from diffusers import DiffusionPipeline; "
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'm')!r}); print(type(p.vae).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("PixelShuffleAutoencoder")


def test_encode_prompts_matches_the_pipelines_own_conditioning(pipe):
    ours = encode_prompts(pipe, ["a red circle", "two green squares"], "cpu")
    theirs, _ = pipe.encode_prompt(["a red circle", "two green squares"], "cpu", 1, False)
    assert ours.shape == (2, TEST_TINY["text_max_length"], TEST_TINY["text_hidden_size"])
    assert torch.equal(ours, theirs)


def test_add_embedding_noise_is_seeded_and_scaled():
    emb = torch.zeros(4, 24, 32)
    a = add_embedding_noise(emb, 0.5, torch.Generator().manual_seed(1))
    b = add_embedding_noise(emb, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(0.5, rel=0.05)
    assert torch.equal(add_embedding_noise(emb, 0.0, None), emb)
    with pytest.raises(ValueError, match="lambda"):
        add_embedding_noise(emb, -1.0, None)


def test_model_sources_are_resolved_with_clear_errors(tmp_path):
    assert resolve_source("tiny") == ("tiny", "tiny")
    assert resolve_source("stabilityai/stable-diffusion-2-1") == ("hf", "stabilityai/stable-diffusion-2-1")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        resolve_source(" ")
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        load_pipeline("nobody-here/no-such-model-xyz")
    with pytest.raises(ValueError, match="captions"):
        load_pipeline("tiny")
