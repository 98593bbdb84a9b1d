"""The project's pipelines through ``DaskRunner`` on a 2-worker ``LocalCluster`` give the same bytes as Kedro's
``SequentialRunner``: the default pipeline (reduced sizes) and a reduced study grid, with the MLflow parent run and
one child run per cell, nothing left running."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from copying_study.audit import _versioned_path, compare_paths
from tests.conftest import run_kedro
from tests.core.test_default_study_determinism import REDUCED

pytestmark = pytest.mark.slow


def run(project: Path, pipelines: list[str], params: dict, runner=None) -> dict:
    """One run; returns its record (datasets saved, MLflow run id) from the project's MLflow hook."""
    from copying_study.settings import HOOKS

    run_kedro(project, pipelines, params=params, runner=runner)
    return copy.deepcopy(HOOKS[0].record)


def differences(project: Path, a: dict, b: dict) -> dict[str, list[str]]:
    """Datasets whose saved bytes differ between two runs' records (the manifest, which holds run ids and times,
    aside), and datasets only one run saved."""
    from kedro.framework.session import KedroSession

    saved_a = {k: v for k, v in a["datasets_saved"].items() if v and k != "run_manifest"}
    saved_b = {k: v for k, v in b["datasets_saved"].items() if v and k != "run_manifest"}
    out: dict[str, list[str]] = {}
    if set(saved_a) != set(saved_b):
        out["(names)"] = sorted(set(saved_a) ^ set(saved_b))
    with KedroSession.create(project_path=project, env="base") as session:
        catalog = session.load_context().catalog
        for name in sorted(set(saved_a) & set(saved_b)):
            diffs = compare_paths(_versioned_path(catalog, name, saved_a[name]),
                                  _versioned_path(catalog, name, saved_b[name]), 0.0, (saved_a[name], saved_b[name]))
            if diffs:
                out[name] = diffs[:3]
    return out


def mlflow_runs(project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["copying_study"], output_format="pandas")


def test_default_pipeline_on_dask_is_audited_byte_for_byte_by_a_sequential_rerun(kedro_project):
    """The Dask run (2 workers, torch at 1 thread each) is re-run by ``copying-study audit`` through Kedro's
    SequentialRunner at the recorded thread count: every dataset and MLflow metric matches exactly."""
    import io

    from copying_study.audit import run_audit
    from copying_study.runner import DaskRunner

    runner = DaskRunner(n_workers=2)
    dask = run(kedro_project, ["__default__"], REDUCED, runner=runner)
    assert runner.last_run["workers"] == 2
    assert sorted(runner.last_run["groups"]) == sorted(
        ["ingest", "dedup_clusters", "finetune", "generate", "evaluate", "complexity_analysis"])
    # the workers' records reached the run manifest: every dataset, the calibration, the controls, the weights
    assert {"training_set", "finetuned_model", "generations", "replication_summary",
            "complexity_correlations", "run_manifest"} <= set(dask["datasets_saved"])
    assert dask["measurement"]["descriptor_calibration"]["copy_threshold"] == 0.5
    assert dask["measurement"]["controls"]["replication_summary"]["status"] in ("passed", "FAILED")
    assert "finetuned_model" in dask["weights"] and dask["threads"] == [{"torch": 1, "blas": 1}]

    out = io.StringIO()
    code = run_audit(dask["mlflow_run_id"], kedro_project, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "torch threads set to the recorded run's 1" in text and "blas threads set to the recorded run's 1" in text
    for name in ("finetuned_model", "generations", "replication_scores", "replication_summary", "evaluate_metrics"):
        assert any(line.startswith(name) and " match " in line for line in text.splitlines()), (name, text)

    runs = mlflow_runs(kedro_project).set_index("run_id")
    assert runs.loc[dask["mlflow_run_id"], "status"] == "FINISHED" and (runs["status"] != "RUNNING").all()
    tags = runs.loc[dask["mlflow_run_id"]]
    assert tags["tags.controls"] in ("passed", "FAILED") and tags["tags.descriptor"] == "default"  # by the workers
    assert tags["tags.kedro.run_id"] == dask["run_id"]  # by the driver
    assert runs.loc[dask["mlflow_run_id"], "metrics.fid"] > 0


def test_study_grid_on_dask_is_byte_identical_with_a_child_run_per_cell(kedro_project, tmp_path):
    from copying_study.runner import DaskRunner
    from tests.evaluate.test_fid import TinyInception, save_script
    from tests.study.test_pipeline import GRID, PARAMS

    grid = copy.deepcopy(GRID)
    grid["study"]["seeds"] = [3, 4]  # 4 cells: two train cells run at once on the two workers
    (kedro_project / "conf" / "base" / "parameters_study.yml").write_text(yaml.safe_dump(grid))
    inception = save_script(TinyInception(), tmp_path / "tiny_inception.pt")
    params = {**PARAMS, "evaluate": {**PARAMS["evaluate"], "fid": {"inception_path": inception}}}

    from copying_study.utils.threads import limit_threads

    with limit_threads(1, 1):  # the workers' counts (Dask's nanny): the same float sums
        sequential = run(kedro_project, ["study"], params)
    runner = DaskRunner(n_workers=2)
    dask = run(kedro_project, ["study"], params, runner=runner)
    cells = {"full_ddf5__s3", "full_ddf5_rt__s3", "full_ddf5__s4", "full_ddf5_rt__s4"}
    assert cells <= set(runner.last_run["groups"])
    assert "study_results" in dask["datasets_saved"]
    assert differences(kedro_project, sequential, dask) == {}

    runs = mlflow_runs(kedro_project)
    assert (runs["status"] == "FINISHED").all()  # nothing orphaned, the parent included
    children = runs[runs["tags.mlflow.parentRunId"] == dask["mlflow_run_id"]]
    assert sorted(children["tags.study.namespace"]) == sorted(cells)
    seq_children = runs[runs["tags.mlflow.parentRunId"] == sequential["mlflow_run_id"]]
    by_cell = seq_children.set_index("tags.study.namespace")["metrics.dataset_similarity"]
    assert children.set_index("tags.study.namespace")["metrics.dataset_similarity"].to_dict() == by_cell.to_dict()
