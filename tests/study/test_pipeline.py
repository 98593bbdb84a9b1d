"""The ``study`` pipeline through Kedro: a 2-cell x 1-seed grid (one train cell, one inference cell) at tiny sizes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from copying_study.study import SECTIONS
from tests.conftest import REPO
from tests.finetune.helpers import TEST_TINY

GRID = {"study": {
    "seeds": [3],
    "shared": {"finetune": {"steps": 4, "batch_size": 4, "sample_every": 0, "sample_prompts": 0,
                            "checkpoint_every": 0, "log_every": 2, "lr_warmup_steps": 1}},
    "train_cells": {"full_ddf5": {"finetune": {"duplication": "full", "ddf": 5}}},
    "inference_cells": {"full_ddf5_rt": {"from": "full_ddf5", "generate": {"mitigation": "rt"}}},
    "report": {"gallery_n": 2},
}}
PARAMS = {
    "device": "cpu",
    "ingest": {"embedded": {"n_images": 16, "n_clusters": 2, "copies_per_cluster": 2}, "resolution": 16},
    "finetune": {"tiny": TEST_TINY, "resolution": 16, "dup_fraction": 0.2},
    "generate": {"n_images": 6, "steps": 2, "batch_size": 6, "grid_size": 4},
    "evaluate": {"bootstrap": {"n_boot": 50}, "plots": {"gallery_n": 2}},
    "complexity": {"n_boot": 100, "image_size": 16},
}


def latest(project: Path, relative: str) -> Path:
    versions = sorted((project / relative).iterdir())
    assert len(versions) == 1, versions
    return versions[0] / Path(relative).name


@pytest.fixture
def study_project(kedro_project: Path, monkeypatch) -> Path:
    """The temp project with the 2-cell grid and ``StudyParamsHooks`` registered (as settings.py will)."""
    from copying_study import settings
    from copying_study.hooks import MlflowTrackingHooks
    from copying_study.pipelines.study.hooks import StudyParamsHooks

    (kedro_project / "conf" / "base" / "parameters_study.yml").write_text(yaml.safe_dump(GRID))
    if not any(isinstance(h, StudyParamsHooks) for h in settings.HOOKS):
        monkeypatch.setattr(settings, "HOOKS", (MlflowTrackingHooks(), StudyParamsHooks()))
    return kedro_project


def test_pipeline_shape_reads_the_grid_from_the_project_conf(study_project):
    from copying_study.pipelines.study.pipeline import create_pipeline

    pipe = create_pipeline()
    namespaces = {n.namespace for n in pipe.nodes if n.namespace}
    assert namespaces == {"ingest", "dedup_clusters", "full_ddf5__s3", "full_ddf5_rt__s3"}
    assert {"study_results", "study_report", "study_metrics_mlflow"} <= pipe.outputs()
    assert "study_metrics" in pipe.all_outputs()
    rt_generate = [n for n in pipe.nodes if n.name == "full_ddf5_rt__s3.generate_images"][0]
    assert "full_ddf5__s3.finetuned_model" in rt_generate.inputs  # the inference cell samples the train cell's model
    assert not any(n.name.startswith("full_ddf5_rt__s3.finetune") for n in pipe.nodes)
    assert {"params:full_ddf5__s3.finetune", "params:device", "params:study"} <= pipe.inputs()
    assert sum(n.name == "ingest.ingest_training_set" for n in pipe.nodes) == 1  # data stages once


@pytest.mark.slow
def test_study_runs_the_grid_writes_results_report_and_a_nested_mlflow_run_per_cell(study_project, tmp_path):
    import mlflow

    from tests.conftest import run_kedro
    from tests.evaluate.test_fid import TinyInception, save_script

    project = study_project
    # a tiny FID network keeps the two cells fast (the bundled Inception runs in tests/evaluate)
    inception = save_script(TinyInception(), tmp_path / "tiny_inception.pt")
    run_kedro(project, ["study"], params={**PARAMS, "evaluate": {**PARAMS["evaluate"],
                                                                 "fid": {"inception_path": inception}}})

    results = pd.read_parquet(latest(project, "data/08_reporting/study_results.parquet"))
    assert results["namespace"].tolist() == ["full_ddf5__s3", "full_ddf5_rt__s3"]
    train, rt = results.iloc[0], results.iloc[1]
    assert (train["duplication"], train["ddf"], train["inference_mitigation"]) == ("full", 5.0, "none")
    assert (rt["inference_mitigation"], rt["from_cell"], rt["finetune_steps"]) == ("rt", "full_ddf5", 4)
    assert (results["n_generations"] == 6).all() and results["seed"].eq(3).all()
    assert results["dataset_similarity"].between(-1, 1).all()
    assert (results["dataset_similarity_ci_low"] <= results["dataset_similarity"]).all()
    assert results["quality"].notna().all() and (results["quality_name"] == "FID").all()
    # each cell's persisted outputs; the inference cell reuses the train cell's model
    base = project / "data/07_model_output/study"
    assert (latest(project, "data/07_model_output/study/full_ddf5__s3/finetuned_model") / "model_index.json").exists()
    assert not (base / "full_ddf5_rt__s3" / "finetuned_model").exists()
    gens = pd.read_parquet(latest(project, "data/07_model_output/study/full_ddf5_rt__s3/generations.parquet"))
    assert (gens["mitigation"] == "rt").all() and (gens["prompt"] != gens["original_prompt"]).any()

    report = latest(project, "data/08_reporting/study_report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in report
    assert report.count("data:image/png;base64,") >= 3 + 2 * 2  # plots + two gallery pairs per cell
    assert "full_ddf5_rt" in report and "kedro run id" in report

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["copying_study"], output_format="pandas")
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert sorted(children["tags.study.cell"]) == ["full_ddf5", "full_ddf5_rt"]
    child = children[children["tags.study.cell"] == "full_ddf5_rt"].iloc[0]
    assert child["params.generate.mitigation"] == "rt" and child["params.finetune.ddf"] == "5.0"
    assert child["metrics.dataset_similarity"] == pytest.approx(rt["dataset_similarity"])
    assert set(results["mlflow_run_id"]) == set(children["run_id"])
    assert "metrics.full_ddf5__s3.train_loss" in parent.columns  # the lead's hook prefixes namespaced metrics


def test_an_invalid_grid_fails_only_the_study_run_naming_the_key(study_project):
    from tests.conftest import run_kedro

    bad = {"study": {**GRID["study"], "train_cells": {"full-ddf5": {}}}}
    (study_project / "conf" / "base" / "parameters_study.yml").write_text(yaml.safe_dump(bad))
    small = {"ingest": PARAMS["ingest"]}
    run_kedro(study_project, ["ingest"], params=small)  # the registry and the hook still work for other pipelines
    assert latest(study_project, "data/03_primary/training_set.parquet").exists()
    with pytest.raises(ValueError, match="'full-ddf5' is not allowed"):
        run_kedro(study_project, ["study"], params=small)


ALT_GRID = {"study": {
    "seeds": [5],
    "train_cells": {"other_ddf3": {"finetune": {"duplication": "full", "ddf": 3}}},
    "inference_cells": {"other_rt": {"from": "other_ddf3", "generate": {"mitigation": "rt"}}},
}}


def test_env_alone_builds_that_envs_grid(study_project, monkeypatch):
    """``kedro run --env alt --pipelines=study`` builds conf/alt's grid (KEDRO_ENV is not set by --env)."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    monkeypatch.delenv("KEDRO_ENV", raising=False)
    (study_project / "conf" / "alt").mkdir()
    (study_project / "conf" / "alt" / "parameters_study.yml").write_text(yaml.safe_dump(ALT_GRID))
    bootstrap_project(study_project)
    with KedroSession.create(project_path=study_project, env="alt") as session:
        session.run(pipeline_names=["study"], node_names=["ingest.ingest_training_set"])  # one cheap node is enough
    pipe = pipelines["study"]
    assert {n.namespace for n in pipe.nodes if n.namespace} == {"ingest", "dedup_clusters", "other_ddf3__s5",
                                                                  "other_rt__s5"}
    rt_generate = [n for n in pipe.nodes if n.name == "other_rt__s5.generate_images"][0]
    assert "other_ddf3__s5.finetuned_model" in rt_generate.inputs


def test_a_pipeline_built_from_another_grid_stops_before_its_first_node(study_project):
    """The issue's case: the base grid built, the paper's params:study in the run — every base cell name exists in
    the paper grid, but infer_rt samples full_ddf10's model where the paper says full_ddf5."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from copying_study.pipelines.study.hooks import StudyParamsHooks
    from copying_study.pipelines.study.pipeline import study_pipeline
    from copying_study.run_checks import RunCheckError
    from copying_study.study import expand_grid

    def grid(env: str) -> dict:
        return OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env=env)["parameters"]["study"]

    built = study_pipeline(expand_grid(grid("base")))
    catalog = DataCatalog()
    catalog["params:study"] = grid("paper")
    with pytest.raises(RunCheckError) as caught:
        StudyParamsHooks().before_pipeline_run({}, built, catalog)
    text = str(caught.value)
    assert "inference cell infer_rt__s0 samples ['full_ddf10__s0.finetuned_model'] but params:study says from: " \
           "full_ddf5" in text
    assert "'study_cell_full_ddf5__s0'" in text and "misses" in text  # cells of the paper grid only
    catalog["params:study"] = grid("base")
    StudyParamsHooks().before_pipeline_run({}, built, catalog)  # the matching grid passes
