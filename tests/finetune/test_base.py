"""The embedded base model: pretrained once from a generic embedded set, deterministic, cached by fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from copying_study.diffusion.autoencoder import autoencoder_settings, train_autoencoder
from copying_study.diffusion.base import (
    BASE_SEED,
    RECORD_FILE,
    base_spec,
    ensure_base,
    fingerprint,
    generic_set,
)
from copying_study.diffusion.models import load_pipeline

#: a base small enough for a test, built by the same code as the real one
TINY_BASE = {"n_images": 24, "autoencoder": {"block_out_channels": [8, 16], "steps": 6, "batch_size": 8},
             "tiny": {"unet_channels": [16, 32], "unet_attention_levels": [False, True], "unet_head_dim": 8,
                      "text_hidden_size": 32, "text_layers": 1, "tokenizer_vocab_size": 600},
             "steps": 4, "batch_size": 4, "lr_warmup_steps": 1}


def test_the_spec_merges_overrides_and_names_bad_keys():
    spec = base_spec({"steps": 10, "autoencoder": {"steps": 3}})
    assert spec["steps"] == 10 and spec["autoencoder"]["steps"] == 3 and spec["autoencoder"]["latent_channels"] == 4
    with pytest.raises(ValueError, match="unknown finetune.embedded_base key.*'stepz'"):
        base_spec({"stepz": 1})
    with pytest.raises(ValueError, match="unknown autoencoder key"):
        base_spec({"autoencoder": {"size": 3}})
    with pytest.raises(ValueError, match="n_images must be a positive integer"):
        base_spec({"n_images": 0})
    assert fingerprint(base_spec({}), torch.device("cpu")) != fingerprint(spec, torch.device("cpu"))


def test_the_generic_set_is_not_the_studys_data():
    from copying_study.data.embedded import generate_embedded

    generic = set(generic_set(base_spec({"n_images": 200}))["sha256"])
    for seed in (0, 1, 2):
        assert not generic & set(generate_embedded(seed=seed)["sha256"])


def test_the_autoencoder_trains_deterministically_and_sets_its_scale():
    images = list(generic_set(base_spec({"n_images": 16}))["image"])
    settings = {"block_out_channels": [8, 16], "steps": 5, "batch_size": 4}
    a, rec_a = train_autoencoder(images, settings, 32, BASE_SEED)
    b, rec_b = train_autoencoder(images, settings, 32, BASE_SEED)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert rec_a == rec_b and rec_a["scaling_factor"] == pytest.approx(1 / rec_a["latent_std"])
    assert a.config.scaling_factor == pytest.approx(rec_a["scaling_factor"])
    assert len(rec_a["loss_history"]) == 1 and np.isfinite(rec_a["reconstruction_mse"])
    with pytest.raises(ValueError, match="multiples of 8"):
        autoencoder_settings({"block_out_channels": [12]})


@pytest.mark.slow
def test_the_base_is_built_once_bit_identically_and_then_reused(tmp_path):
    first, record, built = ensure_base(TINY_BASE, tmp_path / "a")
    assert built and (first / "model_index.json").is_file() and record["fingerprint"][:16] == first.parent.name
    again, record_again, built_again = ensure_base(TINY_BASE, tmp_path / "a")
    assert not built_again and again == first and record_again["weights_checksum"] == record["weights_checksum"]
    other, record_other, _ = ensure_base(TINY_BASE, tmp_path / "b")  # a fresh build elsewhere: the same bytes
    assert record_other["weights_checksum"] == record["weights_checksum"]
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        assert (first / name).read_bytes() == (other / name).read_bytes(), name
    saved = json.loads((first.parent / RECORD_FILE).read_text())
    assert saved["spec"] == base_spec(TINY_BASE) and saved["autoencoder"]["n_images"] == 24
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no half-built folder left
    pipe = load_pipeline(str(first))
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.unet.config.in_channels == 4


@pytest.mark.slow
def test_a_finetune_from_the_embedded_base_records_it(tmp_path):
    from copying_study.diffusion.train import train
    from copying_study.schemas import FinetuneParams
    from tests.conftest import make_training_set

    s = FinetuneParams.from_params({"base_model": "embedded", "embedded_base": TINY_BASE,
                              "embedded_base_dir": str(tmp_path), "steps": 2, "batch_size": 4,
                              "sample_every": 0, "sample_prompts": 0, "checkpoint_every": 0, "resolution": 32})
    result = train(make_training_set(n=8), s, 0, torch.device("cpu"))
    assert result.base["source"] == "embedded" and result.base["built_now"] is True
    assert len(result.base["fingerprint"]) == 64 and result.base["spec"]["n_images"] == 24
    again = train(make_training_set(n=8), s, 0, torch.device("cpu"))
    assert again.base["built_now"] is False and again.final_checksum == result.final_checksum
