"""Finetune's use of the caption stage's ``blip_captions``: the ``blip`` caption type, MC and partial duplication,
on uncaptioned images (classfolders) and on captioned ones."""

from __future__ import annotations

import pytest

from copying_study.data.captions import caption_pool
from copying_study.diffusion.train import draw_step, make_plan
from tests.conftest import make_training_set
from tests.finetune.helpers import small


def blip_of(image_id: str) -> list[str]:
    return [f"a beam caption of {image_id}"] + [f"sampled caption {k} of {image_id}" for k in range(4)]


def table(uncaptioned: bool):
    t = make_training_set(n=8, size=16, n_dup_clusters=0)
    if uncaptioned:
        t["caption"], t["captions"] = "", [[] for _ in range(len(t))]
    t["blip_captions"] = [blip_of(i) for i in t["image_id"]]
    return t


def test_caption_pool_is_own_captions_plus_blip_captions():
    assert caption_pool({"caption": "own", "captions": ["own", "alt"], "blip_captions": ["b0", "b1"]}) == [
        "own", "alt", "b0", "b1"]
    assert caption_pool({"caption": "", "captions": [], "blip_captions": ["b0", "", "b1"]}) == ["b0", "b1"]
    assert caption_pool({"caption": "own", "captions": ["own", "alt"]}) == ["own", "alt"]
    # neither: an empty pool (the settings that need one stop in make_plan, naming the setting: test_uncaptioned.py)
    assert caption_pool({"image_id": "x", "caption": "", "captions": [], "blip_captions": []}) == []


@pytest.mark.parametrize("uncaptioned", [True, False])
def test_blip_caption_type_trains_on_the_deterministic_caption(uncaptioned):
    t = table(uncaptioned)
    plan = make_plan(t, small(caption_type="blip"), seed=0)
    assert plan.base_captions == [blip_of(i)[0] for i in t["image_id"]]
    own = [[] if uncaptioned else list(c) for c in t["captions"]]
    assert plan.alternatives == [o + blip_of(i) for o, i in zip(own, t["image_id"], strict=True)]
    assert not any("stands in" in n for n in plan.notes)


def test_mc_draws_from_the_blip_captions_plus_the_original():
    t = table(uncaptioned=False)
    s = small(caption_type="blip", mitigation="mc")
    plan = make_plan(t, s, seed=0)
    seen: dict[str, set[str]] = {}
    for step in range(40):
        batch = draw_step(plan, s, step, seed=0)
        for i, c in zip(batch.image_ids, batch.captions, strict=True):
            seen.setdefault(i, set()).add(c)
    pool = dict(zip(plan.image_ids, plan.alternatives, strict=True))
    assert all(caps <= set(pool[i]) for i, caps in seen.items())
    drawn = set().union(*seen.values())
    assert any(c.startswith("sampled caption") for c in drawn)  # the sampled BLIP captions are used
    assert drawn & set(t["caption"])  # and so is the original
    assert max(len(c) for c in seen.values()) > 3


def test_partial_duplication_draws_duplicated_captions_from_the_blip_pool():
    t = table(uncaptioned=True)
    s = small(caption_type="blip", duplication="partial", dup_fraction=0.25, ddf=10.0)
    plan = make_plan(t, s, seed=0)
    dup = set(plan.duplicated_ids)
    seen: dict[str, set[str]] = {}
    for step in range(40):
        batch = draw_step(plan, s, step, seed=0)
        for i, c in zip(batch.image_ids, batch.captions, strict=True):
            seen.setdefault(i, set()).add(c)
    for i, caps in seen.items():
        assert caps <= set(blip_of(i)) and (len(caps) > 1 if i in dup else caps == {blip_of(i)[0]})
