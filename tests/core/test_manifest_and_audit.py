import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from copying_study.audit import compare_frames, compare_json, compare_paths
from copying_study.hooks import flatten, metrics_to_log
from copying_study.manifest import find_seeds, folder_checksum, params_hash


def test_flatten_and_metrics_normalisation():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    out = metrics_to_log({"loss": [[0, 1.0], [1, 0.5]], "n": 3, "bad": float("nan"), "flag": True,
                          "sub": {"x": 0.25}, "text": "no"})
    assert out == {"loss": [(0, 1.0), (1, 0.5)], "n": [(0, 3.0)], "sub.x": [(0, 0.25)]}


def test_seeds_and_param_hash():
    params = {"seed": 1, "finetune": {"seed": 2, "sample_seed": 3, "lr": 0.1}, "study": {"seeds": [1, 2]}}
    assert find_seeds(params) == {"seed": 1, "finetune.seed": 2, "finetune.sample_seed": 3, "study.seeds": [1, 2]}
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_folder_checksum_changes_with_content(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    first = folder_checksum(tmp_path)["sha256"]
    (tmp_path / "a.txt").write_text("y")
    assert folder_checksum(tmp_path)["sha256"] != first


def test_compare_json_ignores_timings_and_finds_differences():
    a = {"fid": 1.0, "seconds": 3.0, "nested": {"x": [1, 2]}}
    assert compare_json(a, {"fid": 1.0, "seconds": 9.0, "nested": {"x": [1, 2]}}, 0.0) == []
    assert compare_json(a, {"fid": 1.1, "seconds": 3.0, "nested": {"x": [1, 3]}}, 0.0) == [
        "fid: 1.0 vs 1.1", "nested.x[1]: 2 vs 3"]
    assert compare_json({"v": 1.0}, {"v": 1.0 + 1e-9}, 1e-6) == []


def test_compare_frames_exact_and_tolerant():
    a = pd.DataFrame({"s": [0.5, 0.25], "id": ["a", "b"], "l": [[1, 2], [3]]})
    assert compare_frames(a, a.copy(), 0.0) == []
    b = a.copy()
    b.loc[1, "s"] = 0.2500001
    assert compare_frames(a, b, 0.0) == ["column s: 1 rows differ"]
    assert compare_frames(a, b, 1e-3) == []
    c = a.copy()
    c.at[0, "l"] = [1, 9]
    assert compare_frames(a, c, 0.0) == ["column l: 1 rows differ (first row 0)"]


def test_compare_paths_by_type(tmp_path):
    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4, 3), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png(10))
    (tmp_path / "b" / "x.png").write_bytes(png(10))
    assert compare_paths(tmp_path / "a", tmp_path / "b", 0.0) == []
    (tmp_path / "b" / "x.png").write_bytes(png(11))
    assert compare_paths(tmp_path / "a", tmp_path / "b", 0.0) == ["x.png: pixels differ by up to 1"]
    pd.DataFrame({"v": [1.0]}).to_parquet(tmp_path / "t1.parquet")
    pd.DataFrame({"v": [2.0]}).to_parquet(tmp_path / "t2.parquet")
    assert compare_paths(tmp_path / "t1.parquet", tmp_path / "t2.parquet", 0.0) == ["column v: 1 rows differ"]


def test_paths_naming_the_run_version_compare_equal():
    v = ("2026-11-24T04.02.10.117Z", "2026-11-24T04.08.00.000Z")
    a = {"model": {"source": f"data/06_models/finetuned_model/{v[0]}/finetuned_model"}}
    b = {"model": {"source": f"data/06_models/finetuned_model/{v[1]}/finetuned_model"}}
    assert compare_json(a, b, 0.0, "", v) == []
    assert compare_json(a, b, 0.0) != []  # without the versions the paths differ
    c = {"model": {"source": f"data/06_models/other_model/{v[1]}/finetuned_model"}}
    assert compare_json(a, c, 0.0, "", v) != []
    frame_a = pd.DataFrame({"model": [a["model"]["source"]]})
    frame_b = pd.DataFrame({"model": [b["model"]["source"]]})
    assert compare_frames(frame_a, frame_b, 0.0, v) == []


def test_resuming_is_not_a_difference():
    a = {"settings": {"resume": True, "lr": 0.1}, "resumed_from_step": None}
    b = {"settings": {"resume": False, "lr": 0.1}, "resumed_from_step": 300}
    assert compare_json(a, b, 0.0) == []
    assert compare_json(a, {**b, "settings": {"resume": False, "lr": 0.2}}, 0.0) == ["settings.lr: 0.1 vs 0.2"]


def test_system_metrics_are_recorded_for_runs_that_finetune_unless_switched(monkeypatch):
    from kedro.pipeline import Node, Pipeline

    from copying_study.hooks import SYSTEM_METRICS_ENV, system_metrics_wanted

    def f(x):
        return x

    trains = Pipeline([Node(f, "a", "b", name="finetune_model", namespace="full_ddf10__s0")])
    other = Pipeline([Node(f, "a", "b", name="evaluate_generations")])
    monkeypatch.delenv(SYSTEM_METRICS_ENV, raising=False)
    assert system_metrics_wanted(trains) and not system_metrics_wanted(other)
    monkeypatch.setenv(SYSTEM_METRICS_ENV, "1")
    assert system_metrics_wanted(other)
    monkeypatch.setenv(SYSTEM_METRICS_ENV, "0")
    assert not system_metrics_wanted(trains)
    monkeypatch.setenv(SYSTEM_METRICS_ENV, "sometimes")
    with pytest.raises(ValueError, match=SYSTEM_METRICS_ENV):
        system_metrics_wanted(trains)
