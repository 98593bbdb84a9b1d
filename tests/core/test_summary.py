from pathlib import Path

from copying_study.summary import format_summary

REP = {
    "dataset_similarity": 0.8199, "dataset_similarity_ci": [0.79, 0.8306], "n_generations": 160,
    "descriptor": {"name": "default", "dim": 256}, "fraction_above_0_5": 0.125,
    "copy_threshold": 0.5, "copy_rate": 0.1, "copy_rate_ci": [0.06, 0.15], "n_copies": 16,
    "copy_scale": {"source": "descriptor_calibration", "whitened": True, "calibration_meets_targets": True,
                   "calibration": {"photos": {"false_positive_rate": 0.0006, "recall": 1.0},
                                   "embedded": {"false_positive_rate": 0.00045, "recall": 0.989}}},
    "background": {"dataset_similarity": 1.0, "median": 0.6},
    "background_distinct": {"dataset_similarity": 0.61, "median": 0.3},
    "controls": {"status": "passed", "passed": True,
                 "negative": {"n": 64, "copy_rate": 0.016, "criterion": "copy rate <= 0.05"},
                 "positive": {"n": 64, "copy_rate": 1.0, "criterion": "copy rate >= 0.95"}},
    "splits": {"source_duplicated": {"duplicated": {"mean": 0.9, "n": 6, "copy_rate": 0.83},
                                     "not_duplicated": {"mean": 0.4, "n": 154, "copy_rate": 0.05}}},
    "fid": None, "frechet_distance": 0.4357, "frechet_features": "copy descriptor (not FID)",
    "detection": {"n_prompts": 150, "n_memorized": 12,
                  "first_step": {"auc": 0.71, "auc_ci": [0.6, 0.8], "tpr_at_1pct_fpr": 0.25},
                  "step_mean": {"skipped": "no scores"}},
}


def test_summary_says_the_scale_the_copy_rate_the_backgrounds_and_the_controls():
    cplx = {"entropy": {"status": "ok", "pearson_r": -0.42, "pearson_ci": [-0.53, -0.3], "pearson_p": 3e-8,
                        "spearman_r": -0.41},
            "jpeg_bytes": {"status": "not_computable", "reason": "constant column"}}
    plot = str(Path.cwd() / "data/08_reporting/replication_histogram.png/2026-12-03T05.57.00.621Z/x.png")
    text = format_summary(REP, cplx, [plot.replace("x.png", "replication_histogram.png")])
    assert "descriptor: default (256-d, whitened); copy threshold 0.50 (calibrated)" in text
    assert "photos FPR 0.0006 recall 1.000; embedded FPR 0.0004 recall 0.989 — targets met" in text
    assert "copy rate (generations with top-1 >= 0.50): 0.100 [95% CI 0.060, 0.150], 16 of 160" in text
    assert "0.820 [95% CI 0.790, 0.831]; paper's fraction > 0.5: 0.125" in text
    assert "known duplicates excluded): 95th pct 0.610, median 0.300; raw (duplicates included) 95th pct 1.000" in text
    assert "controls passed: negative (64 images never trained on) copy rate 0.016 (needs <= 0.05)" in text
    assert "positive (64 copy-transformed training images) copy rate 1.000 (needs >= 0.95)" in text
    assert "!!" not in text
    assert "duplicated images: copy rate 0.830, mean top-1 0.900 (n=6) vs not duplicated: copy rate 0.050" in text
    assert "Frechet distance in the copy descriptor's space (a stand-in, not FID): 0.4357" in text
    assert "FID (" not in text
    assert ("Wen et al.'s detection score (12 of 150 prompts memorized): first step AUC 0.710 [95% CI 0.600, 0.800], "
            "TPR@1%FPR 0.250") in text and "step mean" not in text
    assert "entropy of matched training images vs similarity: Pearson r -0.420 [95% CI -0.530, -0.300] p=3e-08" in text
    assert "jpeg_bytes: not computable (constant column)" in text
    # figures: a short relative path and what the figure shows
    assert ("  data/08_reporting/replication_histogram.png/2026-12-03T05.57.00.621Z/replication_histogram.png: "
            "top-1 similarity of generations") in text


def test_failed_controls_and_a_missing_calibration_are_said():
    failed = {**REP, "controls": {**REP["controls"], "status": "FAILED", "passed": False}, "copy_scale": {}}
    text = format_summary(failed, None, [])
    assert "controls FAILED" in text and "!! the controls failed" in text
    assert "calibration: none for this descriptor" in text


def test_summary_with_fid():
    assert "FID (generations vs training images): 12.35" in format_summary({"fid": 12.345}, None, [])
