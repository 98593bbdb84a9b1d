import pytest

from copying_study.data.captions import (
    FIXED_CAPTION,
    base_caption,
    number_addition,
    perturb_caption,
    random_captions,
    random_token,
    vocabulary,
    word_repetition,
)
from copying_study.utils.seeding import python_rng

ROW = {"image_id": "i1", "caption": "a red circle", "captions": ["a red circle", "red round shape", "circle"],
       "class_label": "circle"}


def test_caption_types():
    assert base_caption(ROW, "fixed") == "An image"
    assert base_caption(ROW, "class") == "An image of circle"
    assert base_caption(ROW, "original") == "a red circle"
    assert base_caption(ROW, "blip") == "red round shape"
    assert base_caption({**ROW, "blip_captions": ["blip says"]}, "blip") == "blip says"
    assert base_caption(ROW, "random", {"i1": "x y z"}) == "x y z"


def test_caption_type_errors():
    with pytest.raises(ValueError, match="unknown caption type"):
        base_caption(ROW, "nolevel")
    with pytest.raises(ValueError, match="class_label"):
        base_caption({**ROW, "class_label": None}, "class")
    with pytest.raises(ValueError, match="random caption"):
        base_caption(ROW, "random")


def test_random_captions_fixed_per_image_and_order_free():
    vocab = vocabulary(["alpha beta gamma delta", "epsilon zeta eta theta"])
    a = random_captions(["x", "y"], vocab, seed=1)
    b = random_captions(["y", "x"], vocab, seed=1)
    assert a == b and a["x"] != a["y"]
    assert len(a["x"].split()) == 6 and set(a["x"].split()) <= set(vocab)
    assert random_captions(["x"], vocab, seed=2)["x"] != a["x"]


def test_vocabulary():
    assert vocabulary(["A red, red Circle!", "blue"]) == ["a", "blue", "circle", "red"]
    with pytest.raises(ValueError):
        vocabulary(["123 !!"])


def test_cwr_inserts_only_caption_words():
    out = word_repetition("a red circle", python_rng(0, "t"), n=2)
    assert len(out.split()) == 5 and set(out.split()) <= {"a", "red", "circle"}


def test_rna_inserts_two_integers_in_range():
    out = number_addition("a red circle", python_rng(0, "t"), n=2, high=10**6)
    nums = [w for w in out.split() if w.isdigit()]
    assert len(nums) == 2 and all(0 <= int(n) <= 10**6 for n in nums)
    assert [w for w in out.split() if not w.isdigit()] == ["a", "red", "circle"]


def test_rt_replaces_and_adds_vocab_words():
    vocab = ["zebra"]
    lengths = {len(random_token("a red circle", python_rng(s, "t"), vocab, n=2).split()) for s in range(30)}
    assert lengths == {3, 4, 5}  # 0, 1 or 2 additions (the rest replacements)
    assert "zebra" in random_token("a red circle", python_rng(0, "t"), vocab, n=2)


def test_perturb_probability_gate_and_determinism():
    vocab = ["zebra", "yak"]
    changed = sum(perturb_caption("a red circle", "rc", python_rng(s, "p"), vocab=vocab, p=0.1) != "a red circle"
                  for s in range(1000))
    assert 60 < changed < 140  # ~10 %
    assert perturb_caption("a b", "rt", python_rng(5), vocab=vocab, p=0.0) == "a b"
    x = perturb_caption("a red circle", "cwr", python_rng(7), p=1.0)
    assert x == perturb_caption("a red circle", "cwr", python_rng(7), p=1.0)


def test_mc_draws_from_alternatives_and_gn_is_textless():
    alts = ROW["captions"]
    seen = {perturb_caption("a red circle", "mc", python_rng(s), alternatives_=alts) for s in range(50)}
    assert seen == set(alts)
    assert perturb_caption("a red circle", "gn", python_rng(0)) == "a red circle"
    with pytest.raises(ValueError, match="unknown mitigation"):
        perturb_caption("x", "blur", python_rng(0))
    with pytest.raises(ValueError, match="probability"):
        perturb_caption("x", "cwr", python_rng(0), p=1.5)
    assert FIXED_CAPTION == "An image"
