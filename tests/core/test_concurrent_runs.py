"""Two ``kedro run``\\ s at once in one project: each reads what it saved itself, and the inputs it did not make at the
version they had when it started. Run B (a second process, the CLI) writes a new ``training_set`` while run A (this
process) is between two nodes; before the fix, A's next nodes read B's table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kedro.framework.hooks import hook_impl

from tests.conftest import run_kedro

SMALL = {"ingest": {"resolution": 16, "embedded": {"n_images": 16, "n_control": 4, "n_clusters": 2,
                                                  "copies_per_cluster": 2}},
         "dedup": {"calibration": {"n_per_family": 20, "families": ["synthetic"]}}}


def run_b_ingest(project: Path) -> None:
    """The other run: a separate ``kedro run`` process writing a different training_set (24 rows, not 20)."""
    kedro = Path(sys.executable).parent / "kedro"
    params = ("ingest.resolution=16,ingest.embedded.n_images=20,ingest.embedded.n_control=4,"
              "ingest.embedded.n_clusters=2,ingest.embedded.copies_per_cluster=2")  # 24 rows, A's 20
    done = subprocess.run([str(kedro), "run", "--pipelines=ingest", f"--params={params}"], cwd=project,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


class RunBetweenNodes:
    """Runs the other process once, right after the node ``after`` of this run."""

    def __init__(self, after: str, project: Path):
        self.after, self.project, self.done = after, project, False

    @hook_impl
    def after_node_run(self, node):
        if node.name == self.after and not self.done:
            self.done = True
            run_b_ingest(self.project)


@pytest.fixture
def with_hook(monkeypatch):
    from copying_study import settings

    def add(hook) -> None:
        monkeypatch.setattr(settings, "HOOKS", (*settings.HOOKS, hook))

    yield add


def record():
    from copying_study.settings import HOOKS

    return HOOKS[0].record


def versions(project: Path, relative: str) -> list[str]:
    return sorted(p.name for p in (project / relative).iterdir())


def training_ids(project: Path, version: str) -> list[str]:
    import pandas as pd

    return pd.read_parquet(project / "data/03_primary/training_set.parquet" / version / "training_set.parquet",
                           columns=["image_id"])["image_id"].tolist()


def descriptor_ids(project: Path, version: str) -> list[str]:
    import numpy as np

    with np.load(project / "data/04_feature/train_descriptors.npz" / version / "train_descriptors.npz") as z:
        return [str(x) for x in z["image_ids"]]


@pytest.mark.slow
def test_a_run_reads_the_training_set_it_saved_not_the_one_another_run_saved_meanwhile(kedro_project, with_hook):
    with_hook(RunBetweenNodes("ingest.ingest_training_set", kedro_project))
    run_kedro(kedro_project, ["ingest", "dedup_clusters"], params=SMALL)
    a = record()
    tables = versions(kedro_project, "data/03_primary/training_set.parquet")
    assert len(tables) == 2 and a["run_id"] == tables[0]  # B saved the newer one while A was running
    assert a["datasets_loaded"]["training_set"] == a["run_id"]
    assert descriptor_ids(kedro_project, a["run_id"]) == training_ids(kedro_project, a["run_id"])
    assert len(training_ids(kedro_project, a["run_id"])) != len(training_ids(kedro_project, tables[1]))


@pytest.mark.slow
def test_an_input_is_read_at_the_version_it_had_when_the_run_started(kedro_project, with_hook):
    run_kedro(kedro_project, ["ingest"], params=SMALL)
    (first,) = versions(kedro_project, "data/03_primary/training_set.parquet")
    with_hook(RunBetweenNodes("dedup_clusters.dedup_descriptors", kedro_project))
    run_kedro(kedro_project, ["dedup_clusters"], params=SMALL)  # every later node reads training_set again
    a = record()
    assert len(versions(kedro_project, "data/03_primary/training_set.parquet")) == 2
    assert a["datasets_loaded"]["training_set"] == first
    assert descriptor_ids(kedro_project, a["run_id"]) == training_ids(kedro_project, first)
    assert a["inputs_at_start"]["training_set"] == {"version": first, "how": "newest at run start"}  # in the manifest


def test_two_runs_creating_the_mlflow_experiment_at_once_both_get_it(kedro_project, monkeypatch):
    """On a fresh clone both runs see no experiment and create it; the slower one's create fails on the unique
    constraint. Here the other run wins inside kedro-mlflow's create_experiment call (the real sqlite store raises)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    real_create = MlflowClient.create_experiment
    calls = []

    def other_run_wins(self, name, artifact_location=None, tags=None):
        calls.append(name)
        real_create(self, name, artifact_location=artifact_location, tags=tags)  # the other process, a moment earlier
        return real_create(self, name, artifact_location=artifact_location, tags=tags)  # ours: already exists

    monkeypatch.setattr(MlflowClient, "create_experiment", other_run_wins)
    run_kedro(kedro_project, ["ingest"], params={"ingest": SMALL["ingest"]})
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["copying_study"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert calls == ["copying_study"]  # the race happened once, and the retry found the winner's experiment
