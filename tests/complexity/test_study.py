"""The stage's library functions and nodes on a hand-made training set: scores, report, metrics, plots, params."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from copying_study.metrics.complexity import (
    SCORE_COLUMNS,
    correlate_with_similarity,
    flat_metrics,
    score_matches,
)
from copying_study.pipelines.complexity_analysis import nodes
from copying_study.schemas import ComplexityParams
from copying_study.utils.images import encode_png

PARAMS = {"image_size": 16, "resample": "bicubic", "jpeg_quality": 90, "threshold": 0.6, "n_boot": 200,
          "confidence": 0.95}


def image(kind: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "flat":
        arr = np.full((16, 16, 3), 90, dtype=np.uint8)
    elif kind == "half":
        arr = np.zeros((16, 16, 3), dtype=np.uint8)
        arr[:, 8:] = 200  # 16 px = image_size: no resize, exactly two levels
    else:
        arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(arr))


@pytest.fixture
def training_set() -> pd.DataFrame:
    kinds = ["flat", "half", "noise", "noise", "half"]
    return pd.DataFrame({"image_id": [f"t{i}" for i in range(len(kinds))],
                         "image": [image(k, seed=i) for i, k in enumerate(kinds)],
                         "caption": [f"c{i}" for i in range(len(kinds))]})


def replication(matches: list[str], sims: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"gen_id": [f"g{i}" for i in range(len(matches))], "match_image_id": matches,
                         "top1_similarity": sims, "prompt": ["p"] * len(matches)})


def test_scores_measure_each_generation_match(training_set):
    rs = replication(["t0", "t1", "t2", "t0", "t3", "t4"], [0.9, 0.7, 0.2, 0.95, 0.3, 0.65])
    scores = score_matches(rs, training_set, size=16)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert scores["gen_id"].tolist() == [f"g{i}" for i in range(6)]
    assert scores["top1_similarity"].tolist() == [0.9, 0.7, 0.2, 0.95, 0.3, 0.65]
    assert scores.loc[0, "entropy"] == 0.0 and scores.loc[0, "total_variation"] == 0.0
    assert scores.loc[1, "entropy"] == pytest.approx(math.log(2), abs=1e-12)
    assert scores.loc[2, "entropy"] > 3.0
    assert scores.loc[0, "jpeg_bytes"] < scores.loc[1, "jpeg_bytes"] < scores.loc[2, "jpeg_bytes"]
    assert scores.loc[3].drop(["gen_id", "top1_similarity"]).equals(scores.loc[0].drop(["gen_id", "top1_similarity"]))
    assert scores["jpeg_bytes"].dtype == np.int64


def test_nan_similarity_is_an_error_naming_the_rows(training_set):
    rs = replication(["t0", "t1", "t2", "t3"], [0.5, float("nan"), 0.4, float("nan")])
    with pytest.raises(ValueError, match=r"2 row\(s\) have a missing or non-finite top1_similarity \(gen_id: g1, g3\)"):
        score_matches(rs, training_set, size=16)
    with pytest.raises(ValueError, match="gen_id: g1, g3"):
        nodes.correlate_complexity(rs.assign(entropy=0.0, jpeg_bytes=1, total_variation=0.0), {}, PARAMS, 0)


def test_bad_matches_are_errors_naming_them(training_set):
    with pytest.raises(ValueError, match=r"not in training_set \(e.g. \['zz'\]\)"):
        score_matches(replication(["t0", "zz"], [0.1, 0.2]), training_set, size=16)
    with pytest.raises(ValueError, match=r"no match_image_id \(gen_id: g1\)"):
        score_matches(replication(["t0", None], [0.1, 0.2]), training_set, size=16)
    dup = pd.concat([training_set, training_set.iloc[[0]]])
    with pytest.raises(ValueError, match="duplicated image_id"):
        score_matches(replication(["t0"], [0.1]), dup, size=16)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['match_image_id'\]"):
        score_matches(replication(["t0"], [0.1]).drop(columns="match_image_id"), training_set, size=16)


def test_report_counts_and_simple_images_copied_more(training_set):
    rs = replication(["t0", "t1", "t2", "t3", "t0", "t4", "t2", "t3"],
                     [0.9, 0.7, 0.2, 0.3, 0.85, 0.6, 0.25, 0.35])
    scores = score_matches(rs, training_set, size=16)
    report = correlate_with_similarity(scores, threshold=0.6, n_boot=200, confidence=0.95, seed=0)
    assert (report["n"], report["n_above_threshold"], report["n_below_threshold"]) == (8, 3, 5)  # 0.6 is not above
    assert report["n_unique_matches"] == 5 and report["entropy_unit"] == "nats" and report["messages"] == []
    for measure in ("entropy", "jpeg_bytes", "total_variation"):
        assert report[measure]["status"] == "ok" and report[measure]["n"] == 8
        assert report[measure]["pearson_r"] < -0.5  # the copied images are the simple ones
        assert report[measure]["median_above"] < report[measure]["median_below"]
    json.dumps(report, allow_nan=False)
    again = correlate_with_similarity(scores, threshold=0.6, n_boot=200, confidence=0.95, seed=0)
    assert again == report
    metrics = flat_metrics(report)
    assert metrics["complexity.entropy.pearson_r"] == report["entropy"]["pearson_r"]
    assert metrics["complexity.jpeg_bytes.spearman_ci_low"] == report["jpeg_bytes"]["spearman_ci"][0]
    assert metrics["complexity.n_above_threshold"] == 3.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_two_rows_and_constant_columns_are_reported_not_raised(training_set):
    two = score_matches(replication(["t0", "t2"], [0.9, 0.1]), training_set, size=16)
    report, metrics = nodes.correlate_complexity(two, {}, PARAMS, 0)
    assert all(report[m]["status"] == "not_computable" for m in ("entropy", "jpeg_bytes", "total_variation"))
    assert len(report["messages"]) == 3 and "at least 3" in report["messages"][0]
    assert "complexity.entropy.pearson_r" not in metrics and metrics["complexity.n"] == 2.0
    json.dumps(report, allow_nan=False)

    same = score_matches(replication(["t0", "t0", "t0", "t0"], [0.9, 0.1, 0.5, 0.7]), training_set, size=16)
    report, _ = nodes.correlate_complexity(same, {}, PARAMS, 0)
    assert report["entropy"]["status"] == "not_computable"
    assert "'entropy' is constant" in report["entropy"]["reason"]
    assert any("'jpeg_bytes' is constant" in m for m in report["messages"])


def test_empty_input_gives_outputs_and_plots(training_set):
    scores = score_matches(replication([], []), training_set, size=16)
    assert len(scores) == 0 and list(scores.columns) == list(SCORE_COLUMNS)
    report, metrics = nodes.correlate_complexity(scores, {}, PARAMS, 0)
    assert report["n"] == 0 and report["entropy"]["status"] == "not_computable"
    assert isinstance(nodes.plot_complexity_density(scores, report), Figure)
    assert isinstance(nodes.plot_complexity_scatter(scores, report), Figure)


def test_plots_have_a_panel_per_measure_with_the_correlation(training_set):
    rs = replication(["t0", "t1", "t2", "t3", "t0", "t4"], [0.9, 0.7, 0.2, 0.3, 0.9, 0.65])
    scores = score_matches(rs, training_set, size=16)
    report, _ = nodes.correlate_complexity(scores, {}, PARAMS, 0)
    scatter = nodes.plot_complexity_scatter(scores, report)
    titles = [ax.get_title() for ax in scatter.axes]
    assert len(titles) == 3 and all("Pearson r =" in t for t in titles)
    assert f"{report['entropy']['pearson_r']:.3f}" in titles[0]
    density = nodes.plot_complexity_density(scores, report)
    assert [ax.get_title() for ax in density.axes] == ["entropy", "jpeg_bytes", "total_variation"]
    assert "JPEG size at quality 90" in density.axes[1].get_xlabel()
    labels = density.axes[0].get_legend_handles_labels()[1]
    assert any("similarity > 0.6 (n=4)" in label for label in labels)  # 0.9, 0.7, 0.9, 0.65
    assert any("similarity ≤ 0.6 (n=2)" in label for label in labels)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("resample", "cubic", "complexity.resample = 'cubic': expected 'nearest'"),
    ("jpeg_quality", 101, r"complexity.jpeg_quality = 101: expected a value less than or equal to 100"),
    ("threshold", "high", r"complexity.threshold = 'high': expected a similarity in \[-1, 1\] or 'calibrated'"),
    ("n_boot", 10.5, "complexity.n_boot = 10.5: expected an integer"),
    ("confidence", 1.0, "complexity.confidence = 1.0: expected a value less than 1"),
    ("image_size", True, "complexity.image_size = True: expected an integer"),
])
def test_bad_parameters_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        ComplexityParams.from_params({**PARAMS, key: value})


def test_unknown_and_missing_parameter_keys():
    with pytest.raises(ValueError, match=r"complexity.threshold: missing[^\n]*\n  complexity.treshold: unknown"):
        ComplexityParams.from_params({**{k: v for k, v in PARAMS.items() if k != "threshold"}, "treshold": 0.6})


def test_calibrated_threshold_comes_from_the_descriptor_calibration():
    scores = pd.DataFrame({"gen_id": [f"g{i}" for i in range(12)], "top1_similarity": np.linspace(0.1, 0.9, 12),
                           "match_image_id": [f"m{i}" for i in range(12)], "entropy": np.linspace(3, 1, 12),
                           "jpeg_bytes": np.arange(12) * 10 + 100, "total_variation": np.linspace(5, 1, 12)})
    report, _ = nodes.correlate_complexity(scores, {"copy_threshold": 0.5}, {**PARAMS, "threshold": "calibrated"}, 0)
    assert report["threshold"] == 0.5 and report["threshold_source"].startswith("descriptor_calibration")
    assert report["n_above_threshold"] == int((scores["top1_similarity"] > 0.5).sum())
