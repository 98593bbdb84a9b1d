"""The evaluate nodes on a tiny training set with the training-free default descriptor (no Kedro)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image, ImageEnhance

from copying_study.descriptors import load_descriptor
from copying_study.metrics import evaluation as ev
from copying_study.pipelines.evaluate import nodes
from copying_study.schemas import EvaluateParams
from copying_study.utils.images import decode_image, encode_png
from tests.conftest import make_training_set

EXACT, NEAR, CROP = (0, 8, 13), (10, 15, 20), (12, 17)


@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    return make_training_set()


@pytest.fixture(scope="module")
def train_descriptors(training_set) -> dict:
    d = load_descriptor({"name": "default"}, device="cpu")
    emb = d.encode([decode_image(b) for b in training_set["image"]])
    return {"embeddings": emb, "image_ids": training_set["image_id"].tolist(), "meta": d.meta()}


def calibration_for(meta: dict, threshold: float = 0.5) -> dict:
    """A descriptor_calibration record of ``meta``'s descriptor (the figures are placeholders: the evaluate nodes
    only read the threshold and report the figures)."""
    family = {"false_positive_rate": 0.0005, "recall": 0.99, "meets_targets": True, "n_negative_pairs": 19900,
              "n_positive_pairs": 1400}
    return {"version": 2, "descriptor": meta, "copy_threshold": threshold, "threshold_rule": "test",
            "targets": {"max_false_positive_rate": 0.01, "min_recall": 0.95}, "meets_targets": True,
            "families": {"photos": family, "embedded": family}}


@pytest.fixture(scope="module")
def control_set() -> pd.DataFrame:
    """Images never in the training set (the negative control): photo-like synthetic images. (Scenes from
    ``make_training_set`` itself would not do: it gives scene i the same shape and colour whatever the seed, so
    half of another seed's scenes are look-alikes that score as copies — which is what a negative control is for.)"""
    from copying_study.descriptors.reference import synthetic_photos

    images = synthetic_photos(24, size=32, seed=5)
    return pd.DataFrame({"image_id": [f"control{k}" for k in range(24)], "image": [encode_png(i) for i in images]})


def make_generations(training_set: pd.DataFrame) -> pd.DataFrame:
    """Exact copies, brightened copies, cropped copies of known training rows, and unrelated new scenes."""
    imgs = [decode_image(b) for b in training_set["image"]]
    rows = []

    def add(img: Image.Image, src: int | None, kind: str, prompt: str | None = None):
        rows.append({"gen_id": f"g{len(rows):02d}", "image": encode_png(img), "seed": len(rows), "mitigation": "none",
                     "prompt": prompt or (training_set["caption"][src] if src is not None else "a new scene"),
                     "source_image_id": None if src is None else training_set["image_id"][src], "kind": kind,
                     "guard_tries": 0})

    for i in EXACT:
        add(imgs[i], i, "exact")
    for i in NEAR:
        add(ImageEnhance.Brightness(imgs[i]).enhance(1.15), i, "near")
    for i in CROP:
        add(imgs[i].crop((1, 1, 31, 31)).resize((32, 32), Image.Resampling.BILINEAR), i, "near")
    other = make_training_set(seed=99, n_dup_clusters=0)
    for b in other["image"][:8]:
        add(decode_image(b), None, "unrelated")
    frame = pd.DataFrame(rows)
    frame["original_prompt"] = frame["prompt"]
    return frame


def run_evaluate(training_set, train_descriptors, control_set, params, calibration=None, seed=0):
    # FID off unless asked for: the bundled Inception takes minutes on a CPU (it runs in the pipeline test)
    params = {"fid": {"enabled": False}, **params}
    gens = nodes.select_generations(make_generations(training_set), params)
    record = {"duplicated_ids": training_set["image_id"][:3].tolist(), "duplication": "full"}
    info = nodes.finetune_info(record, params)
    scale = nodes.copy_scale(calibration or calibration_for(train_descriptors["meta"]), train_descriptors, params)
    gd = nodes.describe_generations(gens, train_descriptors, params, "cpu")
    scores = nodes.match_generations(gens, gd, train_descriptors, info, scale, params)
    background = nodes.background_similarity(train_descriptors, training_set, None)
    controls = nodes.score_controls(control_set, training_set, train_descriptors, None, scale, params, seed, "cpu")
    per_prompt = nodes.prompt_scores(scores, params)
    fid = nodes.compute_fid(gens, training_set, gd, train_descriptors, params, 0, "cpu")
    clip = nodes.compute_clipscore(gens, params, "cpu")
    pdq = nodes.pdq_cross_check(scores, gens, training_set, params)
    summary, metrics = nodes.summarise(scores, background, per_prompt, controls, scale, fid, clip, info,
                                       training_set, train_descriptors, params, seed, pdq)
    return {"gens": gens, "gd": gd, "scores": scores, "background": background, "summary": summary,
            "metrics": metrics, "per_prompt": per_prompt, "info": info, "params": params, "scale": scale,
            "controls": controls}


@pytest.fixture(scope="module")
def evaluated(training_set, train_descriptors, control_set, tmp_path_factory):
    from tests.evaluate.test_fid import TinyInception, save_script

    # a tiny stand-in network keeps this fast; the bundled Inception runs in the pipeline test
    inception = save_script(TinyInception(), tmp_path_factory.mktemp("fid") / "inception-2015-12-05.pt")
    return run_evaluate(training_set, train_descriptors, control_set,
                        {"bootstrap": {"n_boot": 200}, "fid": {"inception_path": inception}})


def test_copies_match_their_training_image_and_unrelated_score_lower(evaluated, training_set):
    scores = evaluated["scores"].set_index("gen_id")
    kinds = make_generations(training_set).set_index("gen_id")["kind"]
    sha = dict(zip(training_set["image_id"], training_set["sha256"], strict=True))
    for gen_id, row in scores.iterrows():
        if kinds[gen_id] == "unrelated":
            continue
        # the match is the source image or an exact copy of it (same pixels) inside the training set
        assert sha[row["match_image_id"]] == sha[row["source_image_id"]], gen_id
    exact = scores.loc[kinds == "exact", "top1_similarity"]
    near = scores.loc[kinds == "near", "top1_similarity"]
    unrelated = scores.loc[kinds == "unrelated", "top1_similarity"]
    assert exact.min() == pytest.approx(1.0, abs=1e-4)
    assert near.min() > unrelated.max()
    assert unrelated.mean() < near.mean() - 0.1


def test_replication_scores_schema(evaluated):
    s = evaluated["scores"]
    assert list(s.columns[:5]) == ["gen_id", "file_name", "top1_similarity", "copy", "match_image_id"]
    assert (s["copy"] == (s["top1_similarity"] >= 0.5)).all()
    for col in ("topk_ids", "topk_scores", "prompt", "source_image_id", "source_duplicated"):
        assert col in s.columns
    assert all(len(ids) == 10 and len(sc) == 10 for ids, sc in zip(s["topk_ids"], s["topk_scores"], strict=True))
    assert all(ids[0] == m for ids, m in zip(s["topk_ids"], s["match_image_id"], strict=True))
    np.testing.assert_allclose([sc[0] for sc in s["topk_scores"]], s["top1_similarity"])
    # source 0 is in the duplicated list; unrelated generations have no source -> None
    flags = dict(zip(s["gen_id"], s["source_duplicated"], strict=True))
    assert flags["g00"] is True and flags["g01"] is False and flags["g10"] is None


def test_summary_values_and_keys(evaluated, training_set):
    s, m = evaluated["summary"], evaluated["metrics"]
    top1 = evaluated["scores"]["top1_similarity"].to_numpy()
    assert s["dataset_similarity"] == pytest.approx(np.percentile(top1, 95))
    assert s["fraction_above_0_5"] == pytest.approx(np.mean(top1 > 0.5))
    assert s["n_generations"] == len(top1)
    lo, hi = s["dataset_similarity_ci"]
    assert lo <= s["dataset_similarity"] <= hi
    for key in ("mean", "median", "p75", "p90", "descriptor", "background", "per_prompt", "splits", "fid",
                "clipscore"):
        assert key in s, key
    assert s["descriptor"]["name"] == "default"
    # the copy scale: the calibrated threshold, and the copy rate at it
    assert s["copy_threshold"] == 0.5 and s["copy_scale"]["source"] == "descriptor_calibration"
    assert s["copy_rate"] == pytest.approx(np.mean(top1 >= 0.5)) and s["n_copies"] == int((top1 >= 0.5).sum())
    assert s["copy_rate_ci"][0] <= s["copy_rate"] <= s["copy_rate_ci"][1]
    assert s["copy_scale"]["calibration"]["photos"]["recall"] == 0.99
    # background: the planted exact copies in the training set make the nearest OTHER image score 1.0 ...
    bg = evaluated["background"]
    assert (bg["image_id"] != bg["nearest_image_id"]).all()
    assert (bg["similarity"] > 0.9999).sum() >= 6
    assert s["background"]["n"] == len(bg) and s["background"]["max"] == pytest.approx(1.0, abs=1e-4)
    # ... while the nearest DISTINCT image excludes the planted cluster: no exact copy is left
    planted = training_set.set_index("image_id")["planted_cluster"]
    in_cluster = bg["image_id"].map(planted) >= 0
    assert in_cluster.sum() == 6 and bg.loc[in_cluster, "known_duplicate_group"].notna().all()
    assert (bg["distinct_similarity"] < 0.9999).all()
    assert (bg["nearest_distinct_image_id"].map(planted) != bg["image_id"].map(planted)).loc[in_cluster].all()
    assert s["background_distinct"]["max"] < 0.9999 and s["background_distinct"]["n_in_known_duplicate_groups"] == 6
    # FID with the given network, recorded; beside it a Fréchet distance named by its feature space
    assert s["fid"] > 0 and s["fid_info"]["network"].startswith("user file")
    assert s["fid_info"]["inception_path"] == evaluated["params"]["fid"]["inception_path"]
    assert s["frechet_distance"] > 0 and "default" in s["frechet_features"] and "not FID" in s["frechet_features"]
    assert s["clipscore"] is None and "model_path" in s["clipscore_info"]["reason"]
    # splits: the duplicated group is the one generation whose source is in duplicated_ids
    dup = s["splits"]["source_duplicated"]
    assert dup["duplicated"]["n"] == 1 and dup["n_without_source"] == 8
    planted = s["splits"]["planted_cluster"]
    assert planted["planted"]["n"] == 1 and planted["per_cluster"]["0"]["n"] == 1
    # metrics are flat finite floats; clipscore is left out while unknown
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())
    assert m["dataset_similarity"] == s["dataset_similarity"] and m["fid"] == s["fid"] and "frechet_distance" in m
    json.dumps(s, allow_nan=False)  # what JSONDataset(allow_nan: false) will do


def test_summary_is_seed_stable(evaluated, training_set, train_descriptors):
    e = evaluated
    fid = {"fid": None, "fid_info": {"reason": "x"}}
    clip = {"clipscore": None, "clipscore_info": {"reason": "x"}}
    args = (e["scores"], e["background"], e["per_prompt"], e["controls"], e["scale"], fid, clip, e["info"],
            training_set, train_descriptors, e["params"])
    a, b, c = nodes.summarise(*args, 0)[0], nodes.summarise(*args, 0)[0], nodes.summarise(*args, 1)[0]
    assert a["dataset_similarity_ci"] == b["dataset_similarity_ci"]
    assert a["background"]["dataset_similarity_ci"] == b["background"]["dataset_similarity_ci"]
    assert a["dataset_similarity_ci"] != c["dataset_similarity_ci"]


def test_plots(evaluated, training_set):
    fig = nodes.plot_histogram(evaluated["scores"], evaluated["background"], evaluated["controls"],
                               evaluated["scale"], evaluated["params"])
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) > 0
    gallery = nodes.plot_gallery(evaluated["scores"], evaluated["gens"], training_set,
                                 {"plots": {"gallery_n": 4, "gallery_columns": 2}})
    titles = [ax.get_title(loc=loc) for ax in gallery.axes for loc in ("left", "center") if ax.get_title(loc=loc)]
    assert sum(t.startswith("generation") for t in titles) == 4
    assert any("1.000" in t for t in titles)


def test_bad_inputs_raise_clear_errors(training_set, train_descriptors):
    gens = make_generations(training_set)
    with pytest.raises(ValueError, match="empty"):
        nodes.select_generations(gens.iloc[:0], {})
    corrupt = gens.copy()
    corrupt.loc[3, "image"] = b"\x89PNG not really"
    checked = nodes.select_generations(corrupt, {})
    with pytest.raises(ValueError, match="generation g03"):
        nodes.describe_generations(checked, train_descriptors, {}, "cpu")
    with pytest.raises(ValueError, match="duplicate gen_id"):
        nodes.select_generations(pd.concat([gens, gens.iloc[:1]]), {})
    with pytest.raises(ValueError, match="evaluate.topk: unknown parameter"):
        EvaluateParams.from_params({"topk": 3})
    with pytest.raises(ValueError, match="evaluate.fid.inception: unknown parameter"):
        EvaluateParams.from_params({"fid": {"inception": "x"}})
    with pytest.raises(ValueError, match="evaluate.k = 0: expected a value greater than or equal to 1"):
        EvaluateParams.from_params({"k": 0})
    with pytest.raises(ValueError, match="evaluate.k = 'ten': expected an integer"):
        EvaluateParams.from_params({"k": "ten"})
    with pytest.raises(ValueError, match="evaluate.bootstrap = 5: expected a mapping with keys n_boot, confidence"):
        EvaluateParams.from_params({"bootstrap": 5})
    with pytest.raises(ValueError, match="training_record"):
        nodes.finetune_info({"steps": 3}, {})


def test_mismatched_descriptors_are_refused(training_set, train_descriptors):
    gens = nodes.select_generations(make_generations(training_set), {})
    gd = nodes.describe_generations(gens, train_descriptors, {}, "cpu")
    meta = train_descriptors["meta"]
    for other in ({**meta, "name": "sscd"}, {**meta, "preprocessing": {"resize": "another"}},
                  {**meta, "weights": {"path": "x.pt", "sha256": "0" * 64}}):
        with pytest.raises(ValueError, match="descriptor mismatch"):
            nodes.match_generations(gens, {**gd, "meta": other}, train_descriptors, nodes.no_finetune_info({}),
                                    {"threshold": 0.5}, {})
    broken = {**train_descriptors, "meta": {**train_descriptors["meta"], "dim": 12}}
    with pytest.raises(ValueError, match="12-d"):
        nodes.describe_generations(gens, broken, {}, "cpu")
    short = {**train_descriptors, "image_ids": train_descriptors["image_ids"][:-1],
             "embeddings": train_descriptors["embeddings"][:-1]}
    scores = pd.DataFrame({"top1_similarity": [0.5, 0.6], "original_prompt": ["a", "b"]})
    with pytest.raises(ValueError, match="do not describe this training_set"):
        ev.check_same_ids(training_set, short)
    assert len(scores) == 2


def test_folder_of_generations(tmp_path, training_set, train_descriptors):
    folder = tmp_path / "gens"
    (folder / "sub").mkdir(parents=True)
    imgs = [decode_image(b) for b in training_set["image"][:3]]
    names = ["a.png", "sub/b.jpg", "c.png"]
    for img, name in zip(imgs, names, strict=True):
        img.save(folder / name, quality=95)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"prompt {i}"}) + "\n"
                                                   for i, n in enumerate(names)))
    params = {"generations_path": str(folder)}
    gens = nodes.load_generations_folder(params)
    assert sorted(gens["file_name"]) == sorted(names) and set(gens["prompt"]) == {"prompt 0", "prompt 1", "prompt 2"}
    info = nodes.no_finetune_info(params)
    assert info["available"] is False and "skipped" in info["reason"]
    # the evaluate pipeline's input node also switches to the folder (and ignores the record) when the path is set
    assert nodes.select_generations(pd.DataFrame(), params)["gen_id"].tolist() == gens["gen_id"].tolist()
    assert nodes.finetune_info({"duplicated_ids": []}, params)["available"] is False
    gd = nodes.describe_generations(gens, train_descriptors, params, "cpu")
    scores = nodes.match_generations(gens, gd, train_descriptors, info, {"threshold": 0.5}, params)
    by_name = scores.set_index("file_name")
    assert by_name.loc["a.png", "match_image_id"] in set(training_set["image_id"][:3])
    assert by_name["top1_similarity"].min() > 0.95  # JPEG re-encoding still matches
    assert scores["source_duplicated"].isna().all()
    # a broken folder: an image with no metadata row is an error naming it
    Image.new("RGB", (8, 8)).save(folder / "stray.png")
    with pytest.raises(ValueError, match="stray.png"):
        nodes.load_generations_folder(params)
    with pytest.raises(ValueError, match="generations_path"):
        nodes.load_generations_folder({})


def test_fid_and_clipscore_nodes_with_local_weights(tmp_path, evaluated, training_set, train_descriptors):
    from copying_study.metrics import clipscore as clip_metrics
    from copying_study.metrics import fid as fid_metrics
    from tests.evaluate.clip_fixture import save_tiny_clip
    from tests.evaluate.test_fid import TinyInception, save_script

    inception = save_script(TinyInception(), tmp_path / "inception-2015-12-05.pt")
    clip = save_tiny_clip(tmp_path / "clip")
    params = {"fid": {"inception_path": inception, "batch_size": 8, "max_reference": 20},
              "clipscore": {"model_path": str(clip)}}
    gens, gd = evaluated["gens"], evaluated["gd"]
    out = nodes.compute_fid(gens, training_set, gd, train_descriptors, params, 0, "cpu")
    assert out["fid_info"]["n_real"] == 20 and out["fid_info"]["n_fake"] == len(gens)
    assert len(out["fid_info"]["inception_sha256"]) == 64 and "[0, 255]" in out["fid_info"]["preprocessing"]
    assert out == nodes.compute_fid(gens, training_set, gd, train_descriptors, params, 0, "cpu")  # seeded sample
    assert out["fid"] != nodes.compute_fid(gens, training_set, gd, train_descriptors, params, 1, "cpu")["fid"]
    full = nodes.compute_fid(gens, training_set, gd, train_descriptors,
                             {"fid": {"inception_path": inception}}, 0, "cpu")
    direct = fid_metrics.frechet_inception_distance(
        [decode_image(b) for b in training_set["image"]], [decode_image(b) for b in gens["image"]],
        fid_metrics.load_inception(inception))
    assert full["fid"] == pytest.approx(direct, rel=1e-6) and full["fid"] > 0
    assert full["frechet_distance"] == pytest.approx(evaluated["summary"]["frechet_distance"], rel=1e-6)

    scores = nodes.compute_clipscore(gens, params, "cpu")
    cos = clip_metrics.ClipScorer(clip).cosines([decode_image(b) for b in gens["image"]],
                                                gens["original_prompt"].tolist())
    assert scores["clip_cosine_mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert scores["clipscore"] == pytest.approx(max(100 * cos.mean(), 0.0), abs=1e-4)
    assert scores["clipscore_info"]["n"] == len(gens) and scores["clipscore_info"]["model"] == str(clip)
    with pytest.raises(FileNotFoundError, match="inception_path"):
        nodes.compute_fid(gens, training_set, gd, train_descriptors, {"fid": {"inception_path": str(tmp_path / "x.pt")}},
                          0, "cpu")


def test_controls_pass_on_held_out_scenes_and_copy_transformed_training_images(evaluated):
    c = evaluated["summary"]["controls"]
    assert c["status"] == "passed" and c["passed"] and not c["failures"]
    assert c["negative"]["n"] == 24 and c["negative"]["copy_rate"] <= 0.05
    assert c["positive"]["n"] == 28 and c["positive"]["copy_rate"] >= 0.95  # n_positive 64 > 28 training images
    assert c["positive"]["match_is_source_rate"] >= 0.95
    table = evaluated["controls"]
    assert set(table["control"]) == {"negative", "positive"} and list(table.columns) == list(ev.CONTROL_COLUMNS)
    pos = table[table["control"] == "positive"]
    assert set(pos["transform"]) <= {"resize", "jpeg", "crop", "brightness", "contrast", "text", "combo"}
    assert evaluated["metrics"]["controls_passed"] == 1.0


def test_a_failing_control_is_reported_in_the_summary_metrics_and_printout(training_set, train_descriptors):
    from copying_study.summary import format_summary

    # a "negative control" that holds training images themselves: every one of them is a copy
    leaked = training_set.iloc[:24].copy()
    out = run_evaluate(training_set, train_descriptors, leaked, {"bootstrap": {"n_boot": 100}})
    c = out["summary"]["controls"]
    assert c["status"] == "FAILED" and not c["passed"] and c["negative"]["copy_rate"] == 1.0
    assert "negative control copy rate 1.000" in c["failures"][0]
    assert out["metrics"]["controls_passed"] == 0.0
    text = format_summary(out["summary"], None, [])
    assert "controls FAILED" in text and "!! the controls failed" in text
    # at a threshold only exact copies reach, the copy-transformed training images fail the positive control
    look_alikes = make_training_set(n=24, seed=7, n_dup_clusters=0)  # same shapes and colours as the training set
    alike = run_evaluate(training_set, train_descriptors, look_alikes, {"bootstrap": {"n_boot": 50}})
    assert alike["summary"]["controls"]["negative"]["passed"] is False
    strict = run_evaluate(training_set, train_descriptors, look_alikes,
                          {"copy_threshold": 0.9999, "bootstrap": {"n_boot": 50}})
    assert strict["summary"]["controls"]["positive"]["passed"] is False


def test_a_control_too_small_for_its_estimate_is_an_error_naming_it(training_set, train_descriptors):
    with pytest.raises(ValueError, match="negative control has 5 image.*min_images=20.*control_set"):
        run_evaluate(training_set, train_descriptors, make_training_set(n=5, seed=7, n_dup_clusters=0),
                     {"bootstrap": {"n_boot": 50}})
    with pytest.raises(ValueError, match="negative control has 0 image"):
        run_evaluate(training_set, train_descriptors, make_training_set(n=5, seed=7, n_dup_clusters=0).iloc[:0],
                     {"bootstrap": {"n_boot": 50}})


def test_a_user_threshold_is_recorded_as_such(training_set, train_descriptors, control_set):
    scale = nodes.copy_scale(calibration_for(train_descriptors["meta"]), train_descriptors, {"copy_threshold": 0.8})
    assert scale["threshold"] == 0.8 and scale["calibrated_threshold"] == 0.5
    assert scale["source"].startswith("evaluate.copy_threshold")
    other = load_descriptor({"name": "default", "whitening": None}).meta()
    with pytest.raises(ValueError, match="descriptor mismatch"):
        nodes.copy_scale(calibration_for(other), train_descriptors, {})


def test_pdq_cross_checks_the_descriptors_copies(evaluated):
    pdq = evaluated["summary"]["pdq_cross_check"]
    copies = int(evaluated["scores"]["copy"].sum())
    assert pdq["n_generations"] == len(evaluated["scores"]) == 16 and pdq["n_copies_main"] == copies
    # the exact copies are byte-identical to a training image: PDQ's hash is the same, so it confirms them
    assert pdq["n_copies_confirmed_by_pdq"] >= 3 and 0 < pdq["confirmed_share"] <= 1
    assert 0 <= pdq["agreement"] <= 1 and "31" in pdq["rule"]
    assert evaluated["metrics"]["pdq_confirmed_share"] == pdq["confirmed_share"]
    assert ev.pdq_cross_check(evaluated["scores"], evaluated["gens"], make_training_set(),
                              {"pdq_cross_check": False}) == {"skipped": "evaluate.pdq_cross_check is false"}
