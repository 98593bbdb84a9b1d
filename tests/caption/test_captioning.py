"""The captioning library: settings, model resolution and records, seeded per-image sampling, skipping."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from copying_study.data import captioning as cp
from copying_study.schemas import CaptionParams
from tests.conftest import make_training_set


def settings(model, **kw) -> CaptionParams:
    return CaptionParams.from_params({"model": str(model) if model else None, "n_sampled": 3, "max_new_tokens": 8,
                                      "batch_size": 4, **kw})


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_training_set(n=7, size=24, n_dup_clusters=0)


# --------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"modle": "x"}, r"caption.modle: unknown parameter"),
        ({"decoding": "nucleus"}, r"caption.decoding = 'nucleus': expected 'beam' or 'greedy'"),
        ({"top_p": 0.0}, r"caption.top_p = 0.0: expected a value greater than 0"),
        ({"temperature": 0}, r"caption.temperature = 0: expected a value greater than 0"),
        ({"n_sampled": -1}, r"caption.n_sampled = -1: expected a value greater than or equal to 0"),
        ({"n_sampled": 2.5}, r"caption.n_sampled = 2.5: expected an integer"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, r"caption: min_new_tokens \(9\) must be <= max_new_tokens"),
        ({"model": ""}, r"caption.model = '': expected a non-empty string or null"),
        ({"half": "yes"}, r"caption.half = 'yes': expected true or false"),
    ],
)
def test_bad_settings_name_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        CaptionParams.from_params(params)


def test_defaults_and_generation_record():
    s = CaptionParams.from_params({})
    assert s.model is None and s.per_image == 1 + s.n_sampled
    gen = s.generation()
    assert "model" not in gen and "batch_size" not in gen and gen["decoding"] == "beam"


# --------------------------------------------------------------------------------------------- the model


def test_missing_model_is_one_clear_error_before_any_work(tmp_path, monkeypatch, table):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match=r"caption.model: folder .*no-such-folder' does not exist.*"
                                                 r"docs/real-weights.md"):
        cp.caption_table(table, settings(tmp_path / "no-such-folder"), seed=0, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"caption.model='Salesforce/blip-image-captioning-large' is not in "
                                                r"the local Hugging Face cache.*docs/real-weights.md"):
        cp.caption_table(table, settings("Salesforce/blip-image-captioning-large"), seed=0, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"caption.model: folder .* has no config.json"):
        cp.caption_table(table, settings(tmp_path / "empty"), seed=0, device="cpu")


def test_not_an_image_to_text_model_is_refused(tmp_path, table):
    from tests.evaluate.clip_fixture import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip")
    with pytest.raises(ValueError, match="not an image-to-text model"):
        cp.caption_table(table, settings(folder), seed=0, device="cpu")


def test_record_names_model_class_and_weight_checksums(tiny_blip, table):
    out, rec = cp.caption_table(table, settings(tiny_blip), seed=0, device="cpu")
    digest = hashlib.sha256((tiny_blip / "model.safetensors").read_bytes()).hexdigest()
    assert rec["status"] == "captioned" and rec["reason"] is None
    assert rec["model_class"] == "BlipForConditionalGeneration" and rec["model_type"] == "blip"
    assert rec["weight_files"] == {"model.safetensors": digest}
    assert rec["weights_sha256"] == hashlib.sha256(f"model.safetensors\0{digest}\n".encode()).hexdigest()
    assert rec["checksums"] == {"caption_model": rec["weights_sha256"]}
    assert rec["revision"] is None  # a hand-made folder records no revision
    assert rec["generation"]["n_sampled"] == 3 and rec["captions_per_image"] == 4 and rec["n_images"] == 7
    assert rec["device"] == "cpu" and rec["dtype"] == "float32"
    assert list(out.columns) == [*table.columns, cp.BLIP_COLUMN]
    pd.testing.assert_frame_equal(out.drop(columns=cp.BLIP_COLUMN), table)


def test_a_cached_hugging_face_id_resolves_offline_and_records_its_commit(tmp_path, monkeypatch, tiny_blip):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-blip"
    shutil.copytree(tiny_blip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = cp.resolve_model("acme/tiny-blip")
    assert folder == repo / "snapshots" / commit and cp.folder_revision(folder) == commit


def test_a_local_dir_download_records_its_commit(tmp_path, tiny_blip):
    folder = shutil.copytree(tiny_blip, tmp_path / "blip")
    meta = folder / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text("fedcba9876543210\netag\n1700000000.0\n")
    assert cp.folder_revision(folder) == "fedcba9876543210"


# --------------------------------------------------------------------------------------------- the captions


@pytest.mark.parametrize("model", ["tiny_blip", "tiny_git"])
def test_captions_of_an_image_do_not_depend_on_its_batch(model, request, table):
    """Each image's deterministic and sampled captions are the same alone, in batches of 3 and in reverse order."""
    folder = request.getfixturevalue(model)
    reference, _ = cp.caption_table(table, settings(folder, batch_size=1), seed=3, device="cpu")
    batched, _ = cp.caption_table(table, settings(folder, batch_size=3), seed=3, device="cpu")
    reverse, _ = cp.caption_table(table.iloc[::-1], settings(folder, batch_size=4), seed=3, device="cpu")
    ref = dict(zip(reference["image_id"], reference[cp.BLIP_COLUMN], strict=True))
    assert dict(zip(batched["image_id"], batched[cp.BLIP_COLUMN], strict=True)) == ref
    assert dict(zip(reverse["image_id"], reverse[cp.BLIP_COLUMN], strict=True)) == ref
    assert all(len(c) == 4 for c in ref.values())
    sampled = [c for caps in ref.values() for c in caps[1:]]
    assert len(set(sampled)) > len(sampled) // 2  # the sampled captions are different draws, not one repeated


def test_seed_changes_the_sampled_captions_only(tiny_blip, table):
    a, _ = cp.caption_table(table, settings(tiny_blip), seed=0, device="cpu")
    b, _ = cp.caption_table(table, settings(tiny_blip), seed=1, device="cpu")
    again, _ = cp.caption_table(table, settings(tiny_blip), seed=0, device="cpu")
    assert list(a[cp.BLIP_COLUMN]) == list(again[cp.BLIP_COLUMN])
    assert [c[0] for c in a[cp.BLIP_COLUMN]] == [c[0] for c in b[cp.BLIP_COLUMN]]
    assert [c[1:] for c in a[cp.BLIP_COLUMN]] != [c[1:] for c in b[cp.BLIP_COLUMN]]


def test_greedy_is_one_beam_and_the_prompt_is_stripped(tiny_blip, table):
    greedy, _ = cp.caption_table(table, settings(tiny_blip, decoding="greedy", num_beams=5, n_sampled=0),
                                 seed=0, device="cpu")
    one_beam, _ = cp.caption_table(table, settings(tiny_blip, num_beams=1, n_sampled=0), seed=0, device="cpu")
    assert list(greedy[cp.BLIP_COLUMN]) == list(one_beam[cp.BLIP_COLUMN])
    assert all(len(c) == 1 for c in greedy[cp.BLIP_COLUMN])
    captioner = cp.Captioner(settings(tiny_blip, prompt="a picture of", n_sampled=1), "cpu")
    ids = captioner.processor.tokenizer(["a picture of a red dog"], return_tensors="pt")["input_ids"]
    assert captioner._decode(ids) == ["a red dog"]


def test_sampling_leaves_the_global_torch_generator_alone(tiny_blip, table):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    cp.caption_table(table, settings(tiny_blip), seed=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)


def test_seeded_sampling_draws_from_the_nucleus_with_the_right_frequencies():
    """Rows with the same scores and their own generators: top_p=0.7 keeps tokens {0, 1} (0.5 + 0.3 >= 0.7),
    drawn in proportion 0.5 : 0.3; each row keeps exactly one possible token."""
    n = 4000
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    scores = probs.log().repeat(n, 1)
    sampler = cp.SeededSampling([np.random.default_rng(i) for i in range(n)],
                                cp._warpers(CaptionParams.from_params({"top_p": 0.7})))
    out = sampler(torch.zeros((n, 1), dtype=torch.long), scores)
    assert torch.isfinite(out).sum(dim=1).tolist() == [1] * n
    picked = out.argmax(dim=1)
    counts = torch.bincount(picked, minlength=4).tolist()
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / n - 0.625) < 0.03
    again = cp.SeededSampling([np.random.default_rng(i) for i in range(n)], sampler.warpers)(
        torch.zeros((n, 1), dtype=torch.long), scores)
    assert torch.equal(again.argmax(dim=1), picked)


def test_temperature_flattens_the_draw():
    n = 4000
    scores = torch.tensor([2.0, 0.0]).repeat(n, 1)
    rngs = [np.random.default_rng(i) for i in range(n)]
    hot = cp.SeededSampling(rngs, cp._warpers(CaptionParams.from_params({"top_p": 1.0, "temperature": 100.0})))
    share = (hot(torch.zeros((n, 1), dtype=torch.long), scores).argmax(dim=1) == 0).float().mean().item()
    assert abs(share - 0.5) < 0.03  # exp(2/100) / (1 + exp(2/100)) = 0.505


# --------------------------------------------------------------------------------------------- skipping


def test_no_model_passes_the_table_through_with_a_reason(table):
    out, rec = cp.caption_table(table, CaptionParams.from_params({}), seed=0)
    assert out is table
    assert rec["status"] == "skipped" and "caption.model is null" in rec["reason"]


def test_a_table_that_already_carries_the_captions_is_skipped(tiny_blip, table):
    captioned, _ = cp.caption_table(table, settings(tiny_blip), seed=0, device="cpu")
    out, rec = cp.caption_table(captioned, settings(tiny_blip), seed=0, device="cpu")
    assert out is captioned and rec["status"] == "skipped" and "already carries blip_captions" in rec["reason"]
    fewer = captioned.assign(blip_captions=[c[:2] for c in captioned[cp.BLIP_COLUMN]])
    redone, rec = cp.caption_table(fewer, settings(tiny_blip), seed=0, device="cpu")
    assert rec["status"] == "captioned" and rec["notes"] and "replaced" in rec["notes"][0]
    assert list(redone[cp.BLIP_COLUMN]) == list(captioned[cp.BLIP_COLUMN])
