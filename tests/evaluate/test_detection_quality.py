import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from copying_study.metrics.detection import _auc, _tpr_at_fpr, detection_quality, prompt_table


def sklearn_tpr_at_fpr(labels, values, max_fpr=0.01):
    fpr, tpr, _ = roc_curve(labels, values)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


@pytest.mark.parametrize("n_neg", [40, 250])
def test_point_estimates_agree_with_sklearn_ties_included(n_neg):
    rng = np.random.default_rng(n_neg)
    labels = np.r_[np.ones(30, bool), np.zeros(n_neg, bool)]
    values = np.round(np.r_[rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, n_neg)], 1)  # rounded: ties
    assert _auc(labels[None], values[None])[0] == pytest.approx(roc_auc_score(labels, values))
    assert _tpr_at_fpr(labels[None], values[None])[0] == pytest.approx(sklearn_tpr_at_fpr(labels, values))


def table(memorized, first, mean=None):
    return pd.DataFrame({"prompt": [f"p{i}" for i in range(len(memorized))], "memorized": memorized,
                         "n_generations": 1, "first_step": first, "step_mean": first if mean is None else mean})


def test_a_separating_score_has_auc_one_and_a_random_one_about_half():
    rng = np.random.default_rng(0)
    memorized = np.r_[np.ones(40, bool), np.zeros(160, bool)]
    separating = np.r_[rng.uniform(2, 3, 40), rng.uniform(0, 1, 160)]
    out = detection_quality(table(memorized, separating, rng.uniform(0, 1, 200)), seed=1, n_boot=300)
    first, mean = out["first_step"], out["step_mean"]
    assert first["auc"] == 1.0 and first["tpr_at_1pct_fpr"] == 1.0 and first["auc_ci"] == [1.0, 1.0]
    assert abs(mean["auc"] - 0.5) < 0.15 and mean["auc_ci"][0] < 0.5 < mean["auc_ci"][1]
    assert mean["auc_ci"][0] <= mean["auc"] <= mean["auc_ci"][1]
    assert out["n_prompts"] == 200 and out["n_memorized"] == 40
    assert detection_quality(table(memorized, separating), seed=1, n_boot=300) == \
        detection_quality(table(memorized, separating), seed=1, n_boot=300)  # seeded


def test_one_class_or_no_scores_is_skipped_with_the_reason():
    out = detection_quality(table(np.zeros(5, bool), np.arange(5.0)), seed=0, n_boot=50)
    assert "not memorized" in out["first_step"]["skipped"]
    out = detection_quality(table(np.r_[True, False], [np.nan, np.nan]), seed=0, n_boot=50)
    assert "no detection scores" in out["first_step"]["skipped"]


def test_prompt_table_labels_prompts_and_takes_the_first_generation_and_the_mean():
    scores = pd.DataFrame({
        "gen_id": ["gen-000003", "gen-000001", "gen-000002", "gen-000004"],
        "original_prompt": ["a", "a", "b", "b"],
        "copy": [True, False, False, False],
        "detect_first": [9.0, 2.0, 5.0, 7.0],
        "detect_mean": [1.0, 3.0, 4.0, 6.0],
    })
    t = prompt_table(scores).set_index("prompt")
    assert t.loc["a", "memorized"] and not t.loc["b", "memorized"]
    assert t.loc["a", "first_step"] == 2.0 and t.loc["b", "first_step"] == 5.0  # the lowest gen_id's
    assert t.loc["a", "step_mean"] == 2.0 and t.loc["b", "step_mean"] == 5.0
    assert t.loc["a", "n_generations"] == 2
