"""The ``ingest`` pipeline through Kedro: embedded and imagefolder runs, versions, MLflow, errors before work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from copying_study.pipelines.ingest import create_pipeline
from tests.conftest import run_kedro
from tests.ingest.builders import write_imagefolder

SMALL = {"ingest": {"embedded": {"n_images": 20, "n_clusters": 2, "copies_per_cluster": 2}}}


@pytest.fixture
def project(kedro_project: Path) -> Path:
    (kedro_project / "src").mkdir(exist_ok=True)  # bootstrap_project wants the source dir to exist
    return kedro_project


def versions(project: Path, name: str, folder: str = "03_primary", ext: str = "parquet") -> list[str]:
    return sorted(p.name for p in (project / "data" / folder / f"{name}.{ext}").iterdir())


def catalog(project: Path):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="base") as session:
        return session.load_context().catalog


def test_pipeline_shape():
    pipe = create_pipeline()
    assert pipe.inputs() == {"params:ingest", "params:caption", "params:device", "params:seed"}
    assert pipe.outputs() == {"training_set", "ingest_rejects", "ingest_metrics_mlflow", "control_set",
                              "caption_metrics_mlflow"}
    assert {"ingest_metrics", "caption_metrics"} <= pipe.all_outputs()  # versioned JSON, and copied to MLflow


@pytest.mark.slow
def test_embedded_runs_create_versions_and_log_to_mlflow(project):
    run_kedro(project, ["ingest"], params=SMALL)
    run_kedro(project, ["ingest"], params={**SMALL, "seed": 1})
    first, second = versions(project, "training_set")
    assert versions(project, "ingest_metrics", "08_reporting", "json") == [first, second]
    cat = catalog(project)
    old, new = cat.load("training_set", version=first), cat.load("training_set")
    assert len(old) == len(new) == 20 + 2 * 2
    assert set(old["sha256"]).isdisjoint(new["sha256"])  # seed 0 vs seed 1
    assert (old["planted_cluster"] >= 0).sum() == 2 * 3
    assert cat.load("ingest_rejects").empty
    assert cat.load("ingest_metrics", version=first)["n_planted_clusters"] == 2

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["copying_study"])
    assert len(runs) == 2
    assert (runs["metrics.n_images"] == 24).all() and (runs["metrics.rejected.missing_caption"] == 0).all()
    assert sorted(runs["tags.dataset.saved.training_set"]) == [first, second]


@pytest.mark.slow
def test_imagefolder_from_the_command_line(project, tmp_path):
    folder = tmp_path / "my folder"
    names = write_imagefolder(folder, n=3)
    (folder / names[2]).write_bytes(b"broken")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COPYING_STUDY_NO_PROGRESS": "1", "COPYING_STUDY_MLFLOW": "0"}
    cmd = [sys.executable, "-m", "kedro", "run", "--pipelines", "ingest",
           "--params", f"ingest.source=imagefolder,ingest.path={folder},ingest.resolution=16"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (version,) = versions(project, "training_set")
    table = pd.read_parquet(project / "data/03_primary/training_set.parquet" / version / "training_set.parquet")
    assert table["file_name"].tolist() == names[:2]
    assert (table["source"] == "imagefolder").all() and "planted_cluster" not in table
    rejects = pd.read_parquet(project / "data/02_intermediate/ingest_rejects.parquet" / version /
                              "ingest_rejects.parquet")
    assert rejects[["file_name", "reason"]].values.tolist() == [[names[2], "unreadable_image"]]


def test_missing_path_fails_before_any_output(project, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_kedro(project, ["ingest"], params={"ingest": {"source": "webdataset", "path": str(tmp_path / "nope")}})
    assert not (project / "data" / "03_primary").exists()
