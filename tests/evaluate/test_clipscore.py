"""CLIPScore with a tiny CLIP saved by save_pretrained: values on each stated scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from copying_study.metrics import clipscore
from tests.evaluate.clip_fixture import save_tiny_clip

PROMPTS = ["a red square", "a blue circle", "green stripes", "a yellow triangle"]


def scenes() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in PROMPTS]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return clipscore.ClipScorer(save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"), batch_size=3)


def test_cosines_equal_the_models_own_similarity(scorer):
    images = scenes()
    cos = scorer.cosines(images, PROMPTS)
    pixels = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = scorer.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           pixel_values=pixels)
    expected = (out.logits_per_image.diagonal() / scorer.model.logit_scale.exp()).detach().numpy()
    assert cos.shape == (4,)
    np.testing.assert_allclose(cos, expected, atol=1e-5)
    # batching (3 + 1) does not change a score
    np.testing.assert_allclose(scorer.cosines(images[3:], PROMPTS[3:]), cos[3:], atol=1e-6)


def test_summary_scales_hand_computed():
    s = clipscore.clip_score_summary([0.3, 0.1, -0.2])
    assert s["clip_cosine_mean"] == pytest.approx(0.2 / 3)
    assert s["clipscore"] == pytest.approx(100 * 0.2 / 3)
    assert s["clipscore_hessel"] == pytest.approx(2.5 * (0.3 + 0.1 + 0.0) / 3)
    assert s["n"] == 3
    assert clipscore.clip_score_summary([-0.4, -0.1])["clipscore"] == 0.0
    assert "torchmetrics" in s["clipscore_scale"] and "paper" in s["clip_cosine_scale"]


def test_clipscore_equals_torchmetrics(scorer):
    """torchmetrics' CLIPScore on the same model and processor gives our ``clipscore`` (its get_*_features
    calls are adapted to transformers 5, which returns output objects where torchmetrics 1.9 expects tensors)."""
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPProcessor

    class TensorFeatures(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *a, **k):
            return clipscore._embedding(self.model.get_image_features(*a, **k))

        def get_text_features(self, *a, **k):
            return clipscore._embedding(self.model.get_text_features(*a, **k))

    images = scenes()
    ours = clipscore.clip_score_summary(scorer.cosines(images, PROMPTS))["clipscore"]
    processor = CLIPProcessor(image_processor=scorer.processor, tokenizer=scorer.tokenizer)
    metric = CLIPScore(model_name_or_path=lambda: (TensorFeatures(scorer.model), processor))
    metric.update([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images], PROMPTS)
    assert float(metric.compute()) == pytest.approx(ours, abs=1e-3)


def test_missing_model_and_mismatched_inputs(tmp_path, scorer):
    with pytest.raises(FileNotFoundError, match="model_path"):
        clipscore.ClipScorer(tmp_path / "no-such-clip")
    with pytest.raises(ValueError, match="prompts"):
        scorer.cosines(scenes(), PROMPTS[:2])
    with pytest.raises(ValueError, match="empty"):
        scorer.cosines([], [])
