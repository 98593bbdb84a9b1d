"""What each caption type, duplication mode and mitigation feeds the model (drawn per step, before the encoder),
and the validation of the ``finetune`` parameters."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from copying_study.data.captions import FIXED_CAPTION
from copying_study.diffusion.train import draw_step, make_plan
from copying_study.schemas import FinetuneParams
from tests.conftest import make_training_set
from tests.finetune.helpers import small

SEED = 7


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_training_set(n=40, size=16, seed=1, n_dup_clusters=0)


def fed(table, steps: int = 30, **overrides) -> tuple[dict[str, list[str]], Counter, object]:
    """Captions fed per image over ``steps`` steps, how often each image was drawn, and the plan."""
    s = small(**overrides)
    plan = make_plan(table, s, SEED)
    captions: dict[str, list[str]] = defaultdict(list)
    counts: Counter = Counter()
    for step in range(steps):
        batch = draw_step(plan, s, step, SEED)
        for image_id, caption in zip(batch.image_ids, batch.captions, strict=True):
            captions[image_id].append(caption)
            counts[image_id] += 1
    return captions, counts, plan


def rows(table) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.to_dict("records")}


@pytest.mark.parametrize("caption_type", ["fixed", "class", "original", "blip", "random"])
def test_each_caption_type_feeds_its_caption(table, caption_type):
    captions, _, plan = fed(table, caption_type=caption_type)
    by_id = rows(table)
    seen = {i: set(c) for i, c in captions.items()}
    assert len(seen) == len(table)  # without duplication every image is drawn (epochs)
    assert all(len(c) == 1 for c in seen.values())  # no mitigation: one caption per image, every time
    got = {i: next(iter(c)) for i, c in seen.items()}
    assert got == plan.caption_of()
    if caption_type == "fixed":
        assert set(got.values()) == {FIXED_CAPTION}
    elif caption_type == "class":
        assert all(got[i] == f"An image of {by_id[i]['class_label']}" for i in got)
    elif caption_type == "original":
        assert all(got[i] == by_id[i]["caption"] for i in got)
    elif caption_type == "blip":  # no blip_captions column: the second alternative stands in, and it is said
        assert all(got[i] == by_id[i]["captions"][1] for i in got)
        assert any("no blip_captions column" in note for note in plan.notes)
    else:
        vocab = set(plan.vocabulary)
        assert all(len(c.split()) == 6 and set(c.split()) <= vocab for c in got.values())
        assert len(set(got.values())) == len(got)  # unique keys per image
        again = make_plan(table.iloc[::-1].reset_index(drop=True), small(caption_type="random"), SEED)
        assert again.caption_of() == plan.caption_of()  # fixed per image, independent of row order


def test_blip_captions_column_is_used_when_present(table):
    t = table.copy()
    t["blip_captions"] = [[f"blip {i}", "other"] for i in range(len(t))]
    plan = make_plan(t, small(caption_type="blip"), SEED)
    assert plan.base_captions == [f"blip {i}" for i in range(len(t))]
    assert "blip" in plan.vocabulary


def test_without_duplication_each_epoch_draws_every_image_once(table):
    _, counts, _ = fed(table, steps=20, batch_size=4)  # 80 draws = exactly 2 epochs of 40 images
    assert set(counts.values()) == {2}


def test_duplicated_images_are_drawn_ddf_times_more_often(table):
    _, counts, plan = fed(table, steps=1500, batch_size=8, duplication="full", dup_fraction=0.1, ddf=5.0)
    dup = set(plan.duplicated_ids)
    assert len(dup) == 4
    per_dup = np.mean([counts[i] for i in dup])
    per_other = np.mean([counts[i] for i in plan.image_ids if i not in dup])
    assert per_dup / per_other == pytest.approx(5.0, rel=0.1)
    # the choice is seeded and independent of the row order
    reversed_rows = table.iloc[::-1].reset_index(drop=True)
    reversed_plan = make_plan(reversed_rows, small(duplication="full", dup_fraction=0.1), SEED)
    assert set(reversed_plan.duplicated_ids) == dup
    assert set(make_plan(table, small(duplication="full", dup_fraction=0.1), SEED + 1).duplicated_ids) != dup


def test_full_duplication_keeps_the_caption_and_partial_varies_it(table):
    full, _, plan = fed(table, steps=200, duplication="full", dup_fraction=0.1, ddf=5.0)
    partial, _, plan_p = fed(table, steps=200, duplication="partial", dup_fraction=0.1, ddf=5.0)
    assert plan.duplicated_ids == plan_p.duplicated_ids
    by_id = rows(table)
    for i in plan.duplicated_ids:
        assert set(full[i]) == {by_id[i]["caption"]}
        assert set(partial[i]) <= set(by_id[i]["captions"]) and len(set(partial[i])) >= 3
    others = [i for i in plan.image_ids if i not in set(plan.duplicated_ids)]
    assert all(set(partial[i]) == {by_id[i]["caption"]} for i in others if i in partial)


def test_multiple_captions_draws_from_all_alternatives(table):
    captions, _, _ = fed(table, steps=100, mitigation="mc")
    by_id = rows(table)
    assert all(set(c) <= set(by_id[i]["captions"]) for i, c in captions.items())
    assert np.mean([len(set(c)) for c in captions.values()]) > 3  # 10 draws over 5 alternatives


def test_random_caption_replacement_happens_with_probability_p(table):
    captions, _, plan = fed(table, steps=200, mitigation="rc", mitigation_prob=0.3, rc_words=4)
    by_id = rows(table)
    vocab = set(plan.vocabulary)
    flat = [(i, c) for i, cs in captions.items() for c in cs]
    replaced = [c for i, c in flat if c != by_id[i]["caption"]]
    assert len(replaced) / len(flat) == pytest.approx(0.3, abs=0.05)
    assert all(len(c.split()) == 4 and set(c.split()) <= vocab for c in replaced)


def test_random_token_replaces_or_adds_vocabulary_words(table):
    captions, _, plan = fed(table, steps=50, mitigation="rt", mitigation_insertions=2)
    by_id = rows(table)
    vocab = set(plan.vocabulary)
    lengths = Counter()
    for i, cs in captions.items():
        original = by_id[i]["caption"].split()
        for c in cs:
            words = c.split()
            assert c != by_id[i]["caption"] or len(set(original)) < len(original)
            assert set(words) - set(original) <= vocab
            lengths[len(words) - len(original)] += 1
    assert set(lengths) == {0, 1, 2}  # 2 edits: replace+replace, replace+add, add+add


def test_caption_word_repetition_inserts_the_captions_own_words(table):
    captions, _, _ = fed(table, steps=20, mitigation="cwr", mitigation_insertions=2)
    by_id = rows(table)
    for i, cs in captions.items():
        original = by_id[i]["caption"].split()
        for c in cs:
            words = c.split()
            assert len(words) == len(original) + 2 and set(words) == set(original)


def test_random_number_addition_inserts_two_numbers(table):
    captions, _, _ = fed(table, steps=20, mitigation="rna", mitigation_insertions=2, rna_high=1000)
    by_id = rows(table)
    for i, cs in captions.items():
        for c in cs:
            numbers = [w for w in c.split() if re.fullmatch(r"\d+", w)]
            assert len(numbers) == 2 and all(0 <= int(n) <= 1000 for n in numbers)
            assert " ".join(w for w in c.split() if w not in numbers) == by_id[i]["caption"]


def test_caption_dropout_feeds_empty_captions(table):
    captions, _, _ = fed(table, steps=100, uncond_prob=0.25)
    flat = [c for cs in captions.values() for c in cs]
    assert flat.count("") / len(flat) == pytest.approx(0.25, abs=0.05)


def test_draws_are_a_function_of_seed_and_step_only(table):
    s = small(mitigation="rt", duplication="full", dup_fraction=0.1, ddf=4.0)
    plan = make_plan(table, s, SEED)
    a, b = draw_step(plan, s, 12, SEED), draw_step(plan, s, 12, SEED)
    assert a.captions == b.captions and np.array_equal(a.indices, b.indices) and np.array_equal(a.flips, b.flips)
    c = draw_step(plan, s, 13, SEED)
    assert a.captions != c.captions


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"caption_type": "blipp"}, "finetune.caption_type = 'blipp': expected 'fixed', 'class', 'original'"),
        ({"mitigation": "dropout"}, "finetune.mitigation = 'dropout': expected 'none', 'mc', 'gn'"),
        ({"duplication": "half"}, "finetune.duplication = 'half': expected"),
        ({"ddf": 0.5}, "finetune.ddf = 0.5: expected a value greater than or equal to 1"),
        ({"dup_fraction": 0.0}, "dup_fraction"),
        ({"steps": 0}, "finetune.steps = 0: expected a value greater than or equal to 1"),
        ({"mitigation_prob": 1.5}, "mitigation_prob"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"train_text_encoder": "yes"}, "finetune.train_text_encoder = 'yes': expected true or false"),
        ({"batch_size": 2.5}, "finetune.batch_size = 2.5: expected an integer"),
        ({"stepz": 3}, "finetune.stepz: unknown parameter"),
        ({"duplication": "partial", "caption_type": "fixed"}, "needs caption_type original or blip"),
        ({"base_model": ""}, "base_model"),
    ],
)
def test_bad_parameters_fail_with_the_key_and_allowed_values(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FinetuneParams.from_params(params)


def test_bad_tables_fail_before_training(table):
    s = small()
    with pytest.raises(ValueError, match="finetune_set is empty"):
        make_plan(table.iloc[:0], s, SEED)
    with pytest.raises(ValueError, match="lacks column"):
        make_plan(table.drop(columns=["caption"]), s, SEED)
    with pytest.raises(ValueError, match="repeated image_id"):
        make_plan(pd.concat([table, table.iloc[:1]]), s, SEED)
    no_label = table.assign(class_label=None)
    with pytest.raises(ValueError, match="needs a class_label"):
        make_plan(no_label, small(caption_type="class"), SEED)
