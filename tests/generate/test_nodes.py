"""Prompts, parameters and the generate node (called directly, without Kedro)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from copying_study.descriptors import load_descriptor
from copying_study.diffusion.sample import (
    class_prompts,
    expand_prompts,
    file_prompts,
    read_prompts_file,
    training_prompts,
)
from copying_study.pipelines.generate.nodes import (
    generate_images,
    generate_images_from_model,
    generate_settings,
    plan_generations,
    plot_generations_grid,
)
from copying_study.utils.images import decode_image

from .conftest import CAPTIONS

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "conf/base/parameters_generate.yml").read_text())["generate"]
RECORD = {
    "caption_type": "original",
    "captions": {f"img-{i:02d}": c for i, c in enumerate(CAPTIONS)},
    "vocabulary": sorted({w for c in CAPTIONS for w in c.split()}),
}


def params(**over) -> dict:
    p = copy.deepcopy(BASE)
    for key, value in over.items():
        if isinstance(value, dict):
            p[key].update(value)
        else:
            p[key] = value
    return p


# -- prompts ----------------------------------------------------------------------------------------------------
def test_training_prompts_are_seeded_and_keep_their_source_image():
    a = training_prompts(RECORD["captions"], 50, seed=3)
    assert a == training_prompts(RECORD["captions"], 50, seed=3)
    assert a != training_prompts(RECORD["captions"], 50, seed=4)
    assert all(RECORD["captions"][p.source_image_id] == p.text for p in a)
    assert len({p.source_image_id for p in a}) > 1
    with pytest.raises(ValueError, match="captions"):
        training_prompts({}, 5, seed=0)


def test_prompts_files_txt_csv_parquet_and_errors(tmp_path):
    (tmp_path / "p.txt").write_text("a castle\n\n  a dog on a sofa \nflower made of fire\n")
    assert read_prompts_file(tmp_path / "p.txt") == ["a castle", "a dog on a sofa", "flower made of fire"]
    pd.DataFrame({"prompt": ["x one", None, "y two"], "other": [1, 2, 3]}).to_csv(tmp_path / "p.csv", index=False)
    assert read_prompts_file(tmp_path / "p.csv") == ["x one", "y two"]
    pd.DataFrame({"text": ["z"]}).to_parquet(tmp_path / "p.parquet")
    assert read_prompts_file(tmp_path / "p.parquet", "text") == ["z"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="contains no prompts"):
        read_prompts_file(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="no column 'prompt'"):
        read_prompts_file(tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts_file(tmp_path / "missing.txt")
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(ValueError, match="unknown prompts file type '.json'"):
        read_prompts_file(tmp_path / "p.json")


def test_file_prompts_sample_without_replacement_when_possible():
    texts = [f"prompt {i}" for i in range(10)]
    picked = [p.text for p in file_prompts(texts, 10, seed=0)]
    assert sorted(picked) == sorted(texts) and picked != texts
    assert len(file_prompts(texts[:3], 7, seed=0)) == 7


def test_class_prompts_and_expansion():
    prompts = class_prompts(["dog", "church", "dog", ""], 20, seed=1)
    assert {p.text for p in prompts} == {"An image of dog", "An image of church"}
    assert all(p.source_image_id is None for p in prompts)
    with pytest.raises(ValueError, match="class names"):
        class_prompts([], 3, seed=1)
    expanded = expand_prompts(prompts[:3], 5, 2)
    assert [p.text for p in expanded] == [prompts[0].text] * 2 + [prompts[1].text] * 2 + [prompts[2].text]


# -- parameters -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"mitigation": "blur"}, "generate.mitigation = 'blur': expected 'none', 'gn', 'rc'"),
        ({"n_images": 0}, "generate.n_images = 0: expected a value greater than or equal to 1"),
        ({"scheduler": "lms"}, "generate.scheduler = 'lms': expected one of ddim"),
        ({"prompts": "file"}, "prompts_file is not set"),
        ({"prompts": "web"}, "generate.prompts = 'web': expected one of training, file, class"),
        ({"strengths": {"p": 2}}, "generate.strengths.p = 2: expected a value less than or equal to 1"),
        ({"copy_guard": {"max_tries": 0}}, "generate.copy_guard.max_tries"),
        ({"copy_guard": {"enabled": "false"}}, "generate.copy_guard.enabled = 'false': expected true or false"),
        ({"bogus": 1}, "generate.bogus: unknown parameter"),
    ],
)
def test_bad_parameters_name_the_key(over, match):
    with pytest.raises(ValueError, match=match):
        generate_settings(params(**over))


def test_conf_files_validate():
    generate_settings(BASE)
    paper = yaml.safe_load((REPO / "conf/paper/parameters_generate.yml").read_text())["generate"]
    p = generate_settings(paper)
    assert (p["n_images"], p["steps"], p["guidance"], p["resolution"]) == (4000, 50, 7.5, 256)


# -- plan -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["none", "gn", "rt", "cwr", "rna", "rc", "wen", "delayed", "opposite"])
def test_plan_changes_only_what_the_mitigation_should(name):
    plan, _, _ = plan_generations(RECORD, generate_settings(params(n_images=30, mitigation=name)), seed=0)
    base, _, _ = plan_generations(RECORD, generate_settings(params(n_images=30)), seed=0)
    for col in ("gen_id", "original_prompt", "seed", "source_image_id"):  # untouched by any mitigation
        assert plan[col].tolist() == base[col].tolist()
    vocab = set(RECORD["vocabulary"])
    for row in plan.itertuples():
        orig, new = row.original_prompt.split(), row.prompt.split()
        if name in ("none", "gn", "wen", "delayed", "opposite"):  # the last three act in the sampler
            assert new == orig
        elif name == "cwr":  # two words of the caption itself inserted
            assert len(new) == len(orig) + 2 and sorted(set(new)) == sorted(set(orig))
        elif name == "rna":  # two integers in [0, 10^6] inserted, the words kept in order
            nums = [w for w in new if re.fullmatch(r"\d+", w)]
            assert len(nums) == 2 and all(0 <= int(n) <= 10**6 for n in nums)
            assert [w for w in new if not re.fullmatch(r"\d+", w)] == orig
        elif name == "rc":  # a random caption of rc_words vocabulary words
            assert len(new) == 4 and set(new) <= vocab
        else:  # rt: each of 2 edits replaces a word or adds one, always a vocabulary word
            assert len(orig) <= len(new) <= len(orig) + 2 and set(new) - set(orig) <= vocab
    assert set(plan["gn_lambda"]) == ({0.1} if name == "gn" else {0.0})
    if name in ("rt", "cwr", "rna", "rc"):
        assert (plan["prompt"] != plan["original_prompt"]).mean() > 0.5
        again, _, _ = plan_generations(RECORD, generate_settings(params(n_images=30, mitigation=name)), seed=0)
        assert again["prompt"].tolist() == plan["prompt"].tolist()  # every choice seeded


def test_plan_without_vocabulary_falls_back_loudly(caplog):
    record = {k: v for k, v in RECORD.items() if k != "vocabulary"}
    _, vocab, fallbacks = plan_generations(record, generate_settings(params(n_images=4, mitigation="rt")), seed=0)
    assert vocab and fallbacks and "no vocabulary" in fallbacks[0]
    assert "no vocabulary" in caplog.text


# -- the node ---------------------------------------------------------------------------------------------------
def descriptors_of(images) -> dict:
    d = load_descriptor({"name": "default", "device": "cpu"})
    return {"embeddings": d.encode(images), "image_ids": [f"t{i}" for i in range(len(images))], "meta": d.meta()}


def test_generate_node_writes_the_contract_table(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)  # consumed as a folder path, as the catalog hands it over
    p = params(n_images=5, images_per_prompt=2, steps=3, batch_size=4, mitigation="rna",
               copy_guard={"enabled": True, "threshold": 0.99})
    rng = np.random.default_rng(0)
    train = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
    table, metrics, record = generate_images(str(folder), RECORD, descriptors_of(train), None, p, 0, "cpu")
    assert list(table.columns[:8]) == ["gen_id", "prompt", "original_prompt", "seed", "first_seed", "mitigation",
                                       "gn_lambda", "image"]
    assert len(table) == 5 and table["gen_id"].is_unique
    assert table["original_prompt"].iloc[0] == table["original_prompt"].iloc[1]  # 2 images per prompt
    assert table["seed"].nunique() == 5 and table["source_image_id"].notna().all()
    assert all(decode_image(b).size == (16, 16) for b in table["image"])
    assert (table["guard_tries"] == 0).all() and all(len(s) == 1 for s in table["guard_scores"])
    assert metrics["n_images"] == 5 and metrics["guard_caught"] == 0 and metrics["images_per_second"] > 0
    assert record["sampler"]["scheduler"] == "ddim" and record["model"]["source"] == str(folder)
    assert record["copy_guard"]["descriptor"]["name"] == "default"
    again, _, _ = generate_images(str(folder), RECORD, descriptors_of(train), None, p, 0, "cpu")
    assert again["image"].tolist() == table["image"].tolist()  # byte-identical re-run
    fig = plot_generations_grid(table, p)
    assert len([ax for ax in fig.axes if ax.images]) == 5
    # "calibrated": the guard's threshold is the descriptor's copy threshold from descriptor_calibration
    d = descriptors_of(train)
    calibrated = params(n_images=2, steps=2, batch_size=2, copy_guard={"enabled": True, "threshold": "calibrated"})
    _, _, rec = generate_images(str(folder), RECORD, d, {"copy_threshold": 0.97, "descriptor": d["meta"]},
                                calibrated, 0, "cpu")
    assert rec["copy_guard"]["threshold"] == 0.97 and rec["copy_guard"]["threshold_source"] == "descriptor_calibration"
    with pytest.raises(ValueError, match="descriptor mismatch"):
        generate_images(str(folder), RECORD, d, {"copy_threshold": 0.97, "descriptor": {**d["meta"], "dim": 3}},
                        calibrated, 0, "cpu")


def test_generate_node_reports_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="was not found"):
        generate_images(str(tmp_path / "nowhere"), RECORD, {}, None, params(n_images=1), 0, "cpu")
    with pytest.raises(ValueError, match="no model to sample from"):
        generate_images(None, RECORD, {}, None, params(n_images=1), 0, "cpu")


def test_generate_from_model_uses_a_folder_and_prompts_file(pipe, tmp_path, caplog):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    (tmp_path / "prompts.txt").write_text("a castle on a hill\na dog on a sofa\n")
    p = params(model=str(folder), prompts="file", prompts_file=str(tmp_path / "prompts.txt"), n_images=3,
               steps=2, batch_size=3, mitigation="rt")
    table, metrics, record = generate_images_from_model({}, None, p, 0, "cpu")
    assert len(table) == 3 and table["source_image_id"].isna().all()
    assert (table["detect_first"] > 0).all() and (table["detect_mean"] > 0).all()  # Wen's scores, every image
    assert metrics["detect_first_mean"] == pytest.approx(table["detect_first"].mean())
    wen = params(model=str(folder), prompts="file", prompts_file=str(tmp_path / "prompts.txt"), n_images=2,
                 steps=2, batch_size=2, mitigation="wen", strengths={"wen_target_loss": 0.0, "wen_max_iters": 2})
    wtable, _, wrecord = generate_images_from_model({}, None, wen, 0, "cpu")
    assert (wtable["wen_iterations"] == 2).all() and (wtable["detect_first"] < wtable["wen_score_before"]).all()
    assert wrecord["mitigation"]["wen_max_iters"] == 2 and (wtable["mitigation"] == "wen").all()
    # wen_target_quantile: the target is that quantile of the prompts' first-step scores (each prompt's first image,
    # before optimisation), and an image is optimised exactly when its own score starts above the target
    calibrated = params(model=str(folder), prompts="file", prompts_file=str(tmp_path / "prompts.txt"), n_images=4,
                        images_per_prompt=2, steps=2, batch_size=4, mitigation="wen",
                        strengths={"wen_target_quantile": 0.5, "wen_max_iters": 2})
    ctable, _, crecord = generate_images_from_model({}, None, calibrated, 0, "cpu")
    cal = crecord["mitigation"]["wen_target_calibration"]
    heads = ctable.groupby("original_prompt", sort=False)["wen_score_before"].first().to_numpy()
    assert cal["n_prompts"] == 2 and cal["target"] == pytest.approx(float(np.quantile(heads, 0.5)), rel=1e-6)
    assert crecord["mitigation"]["wen_target_loss"] == cal["target"]
    assert ((ctable["wen_iterations"] > 0) == (ctable["wen_score_before"] > cal["target"])).all()
    assert (ctable["wen_iterations"] > 0).any() and (ctable["wen_iterations"] == 0).any()
    assert record["mitigation"]["wen_target_calibration"] is None  # other mitigations: nothing calibrated
    assert set(table["original_prompt"]) <= {"a castle on a hill", "a dog on a sofa"}
    assert record["fallbacks"] and "no vocabulary" in caplog.text  # rt words come from the prompts, said loudly
    with pytest.raises(ValueError, match="needs generate.model"):
        generate_images_from_model({}, None, params(), 0, "cpu")
    with pytest.raises(ValueError, match="'training' needs a finetuning record"):
        generate_images_from_model({}, None, params(model=str(folder)), 0, "cpu")
