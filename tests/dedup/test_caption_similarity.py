"""Caption similarity (paper §5.1): median over pairs of text cosine × unigram Jaccard."""

from __future__ import annotations

import numpy as np
import pytest

from copying_study.metrics.caption_similarity import (
    CLIP_METHOD,
    TFIDF_METHOD,
    TfidfTextEncoder,
    caption_similarity,
    load_text_encoder,
    sample_pairs,
    unigram_jaccard,
)

CAPTIONS = ["a red circle on a blue background", "A red circle, blue background", "two green squares",
            "a red circle on a blue background"]


def test_unigram_jaccard():
    assert unigram_jaccard("a red circle", "A red, circle!") == 1.0
    assert unigram_jaccard("a red circle", "a blue square") == pytest.approx(1 / 5)
    assert unigram_jaccard("", "") == 1.0 and unigram_jaccard("...", "!!") == 0.0


def test_median_of_cosine_times_jaccard():
    enc = TfidfTextEncoder(CAPTIONS)
    feats = enc.encode(CAPTIONS).toarray()
    expected = np.median([float(feats[a] @ feats[b]) * unigram_jaccard(CAPTIONS[a], CAPTIONS[b])
                          for a in range(4) for b in range(a + 1, 4)])
    sim, n_pairs = caption_similarity(CAPTIONS, enc, 100, np.random.default_rng(0))
    assert n_pairs == 6 and sim == pytest.approx(expected, abs=1e-6)
    same, _ = caption_similarity([CAPTIONS[0]] * 3, enc, 100, np.random.default_rng(0))
    assert same == pytest.approx(1.0)
    assert np.isnan(caption_similarity(CAPTIONS[:1], enc, 100, np.random.default_rng(0))[0])


def test_large_clusters_sample_pairs_with_a_seed():
    i, j = sample_pairs(300, 50, np.random.default_rng(7))
    i2, j2 = sample_pairs(300, 50, np.random.default_rng(7))
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 50 and (i < j).all()
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(j, j2)
    captions = [f"caption number {k % 7}" for k in range(300)]
    _, n_pairs = caption_similarity(captions, TfidfTextEncoder(captions), 50, np.random.default_rng(1))
    assert n_pairs == 50


def test_fallback_is_named_and_warned(caplog):
    enc = load_text_encoder(None, CAPTIONS)
    assert enc.method == TFIDF_METHOD and "stand-in" in caplog.text
    with pytest.raises(ValueError, match="captions are all empty"):
        TfidfTextEncoder(["", " "])
    with pytest.raises(ValueError, match="max_caption_pairs must be >= 1"):
        caption_similarity(CAPTIONS, enc, 0, np.random.default_rng(0))


def test_clip_text_model_from_a_local_folder(tmp_path):
    import torch
    from transformers import CLIPModel

    from tests.evaluate.clip_fixture import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip")
    enc = load_text_encoder(str(folder), CAPTIONS)
    assert enc.method == CLIP_METHOD
    feats = enc.encode(CAPTIONS)
    assert feats.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    full = CLIPModel.from_pretrained(folder).eval()
    tok = enc.tokenizer(CAPTIONS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(full.text_projection(full.text_model(**tok).pooler_output), dim=-1).numpy()
    np.testing.assert_allclose(feats[:2], ref, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="dedup.caption_model"):
        load_text_encoder(str(tmp_path / "missing"), CAPTIONS)
