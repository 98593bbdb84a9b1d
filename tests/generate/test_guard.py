"""The copy guard catches a planted copy and replaces it, recording every try."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from copying_study.descriptors import load_descriptor
from copying_study.diffusion.guard import CopyIndex, GuardSettings, generate_guarded, guard_metrics
from copying_study.diffusion.sample import ImageRequest, MitigationSettings, Sample, Sampler
from copying_study.utils.seeding import derive_seed

from .conftest import CAPTIONS

VOCAB = ["apple", "house", "river", "cloud"]


@pytest.fixture(scope="module")
def descriptor():
    return load_descriptor({"name": "default", "device": "cpu"})


def noise_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def test_planted_copy_is_caught_and_replaced(pipe, descriptor):
    sampler = Sampler(pipe, device=torch.device("cpu"), steps=3, batch_size=4)
    originals = CAPTIONS[:4]
    reqs = [ImageRequest(p, 100 + i) for i, p in enumerate(originals)]
    unguarded = sampler.generate(reqs)
    # the training set holds an exact copy of the first generation among unrelated images
    train = [unguarded[0], *noise_images(15, 0)]
    ids = [f"train-{i}" for i in range(len(train))]
    index = CopyIndex(descriptor, descriptor.encode(train), ids, meta=descriptor.meta())
    first_scores, _ = index.top1(unguarded)
    threshold = 0.98
    assert first_scores[0] > 0.999 and (first_scores[1:] < threshold).all()

    guard = GuardSettings(enabled=True, threshold=threshold, max_tries=3, mitigation="rt")
    gens = generate_guarded(sampler, originals, reqs, "none", guard=guard, index=index,
                            strengths=MitigationSettings(), vocab=VOCAB)

    caught = gens[0]
    assert caught.guard_tries >= 1 and len(caught.guard_scores) == caught.guard_tries + 1
    assert caught.guard_scores[0] > 0.999 and caught.guard_score < threshold
    assert caught.mitigation == "rt" and caught.request.prompt != originals[0]
    assert caught.request.seed == derive_seed(100, "guard", caught.guard_tries)  # derived, recorded
    assert caught.first_seed == 100 and caught.match_image_id is not None
    assert not np.array_equal(np.asarray(caught.image), np.asarray(unguarded[0]))
    for g, img, req in zip(gens[1:], unguarded[1:], reqs[1:], strict=True):  # the rest are untouched
        assert g.guard_tries == 0 and len(g.guard_scores) == 1 and g.mitigation == "none"
        assert g.request == req and np.array_equal(np.asarray(g.image), np.asarray(img))

    metrics = guard_metrics(gens, guard)
    assert metrics["guard_caught"] == 1 and metrics["guard_replaced"] == 1 and metrics["guard_unresolved"] == 0
    assert metrics["guard_regenerations"] == caught.guard_tries


class StubbornSampler:
    """Always returns the same image, whatever it is asked: the guard can never get below the threshold."""

    batch_size = 2

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.seen: list[list[ImageRequest]] = []

    def sample_batch(self, requests):
        self.seen.append(list(requests))
        return [Sample(self.image.copy()) for _ in requests]


def test_unresolvable_copy_spends_max_tries_and_is_reported(descriptor):
    copy = noise_images(1, 1)[0]
    index = CopyIndex(descriptor, descriptor.encode([copy, *noise_images(3, 2)]), list("abcd"))
    stub = StubbornSampler(copy)
    guard = GuardSettings(enabled=True, threshold=0.9, max_tries=2, mitigation="none")
    gens = generate_guarded(stub, ["a red circle"], [ImageRequest("a red circle", 7)], "none", guard=guard,
                            index=index)
    g = gens[0]
    assert g.guard_tries == 2 and len(g.guard_scores) == 3 and g.guard_score >= 0.9
    assert g.match_image_id == "a"
    # the regenerations used new derived seeds and (mitigation none) the original prompt
    assert [r[0].seed for r in stub.seen[1:]] == [derive_seed(7, "guard", t) for t in (1, 2)]
    assert all(r[0].prompt == "a red circle" for r in stub.seen)
    m = guard_metrics(gens, guard)
    assert m["guard_caught"] == 1 and m["guard_replaced"] == 0 and m["guard_unresolved"] == 1


def test_guard_off_scores_nothing(descriptor):
    stub = StubbornSampler(noise_images(1, 3)[0])
    gens = generate_guarded(stub, ["x"], [ImageRequest("x", 1)], "none", guard=GuardSettings(enabled=False))
    assert gens[0].guard_tries == 0 and gens[0].guard_scores == [] and np.isnan(gens[0].guard_score)
    assert guard_metrics(gens, GuardSettings(enabled=False)) == {"guard_enabled": 0.0}


def test_guard_settings_and_index_are_checked(descriptor):
    with pytest.raises(ValueError, match="copy_guard.mitigation"):
        GuardSettings(mitigation="blur")
    with pytest.raises(ValueError, match="max_tries"):
        GuardSettings(max_tries=0)
    with pytest.raises(ValueError, match="image ids"):
        CopyIndex(descriptor, np.eye(3, dtype=np.float32), ["a"])
    with pytest.raises(ValueError, match="no training descriptor index"):
        generate_guarded(StubbornSampler(noise_images(1, 0)[0]), ["x"], [ImageRequest("x", 1)], "none",
                         guard=GuardSettings(enabled=True))


def test_detection_trigger_mitigates_flagged_prompts_before_sampling(pipe):
    """``trigger: detection``: the prompt-level score (first step of the prompt's first image, before sampling)
    decides; every image of a flagged prompt is made with the guard's mitigation and its own seed, the others
    exactly as requested. The threshold is put between two measured prompt scores, so one prompt is flagged."""
    sampler = Sampler(pipe, device=torch.device("cpu"), steps=3, batch_size=4)
    originals = [CAPTIONS[0], CAPTIONS[0], CAPTIONS[5], CAPTIONS[5]]
    reqs = [ImageRequest(p, 300 + i) for i, p in enumerate(originals)]
    heads = sampler.first_step_scores([reqs[0], reqs[2]])
    assert heads[0] != heads[1]
    flagged = 0 if heads[0] > heads[1] else 2
    guard = GuardSettings(enabled=True, trigger="detection", detection_threshold=float(heads.mean()),
                          mitigation="delayed")
    plain = sampler.sample(reqs)
    gens = generate_guarded(sampler, originals, reqs, "none", guard=guard, strengths=MitigationSettings())
    for i, g in enumerate(gens):
        assert g.prompt_score == pytest.approx(heads[0] if i < 2 else heads[1], abs=1e-6)
        assert g.request.seed == reqs[i].seed and g.first_seed == reqs[i].seed
        if i in (flagged, flagged + 1):
            assert g.mitigation == "delayed" and g.guard_tries == 1 and g.request.early_guidance == 0.0
            assert not np.array_equal(np.asarray(g.image), np.asarray(plain[i].image))
        else:
            assert g.mitigation == "none" and g.guard_tries == 0 and g.request == reqs[i]
            assert np.array_equal(np.asarray(g.image), np.asarray(plain[i].image))
            assert g.detect_first == plain[i].detect_first
    assert guard_metrics(gens, guard)["guard_caught"] == 2
    with pytest.raises(ValueError, match="detection_threshold is not set"):
        GuardSettings(enabled=True, trigger="detection")
