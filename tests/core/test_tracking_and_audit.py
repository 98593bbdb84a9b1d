"""MLflow tracking, the run manifest and `copying-study audit`, end to end on the ingest pipeline."""

import io
import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from copying_study.audit import run_audit
from tests.conftest import run_kedro

SMALL = {"ingest": {"embedded": {"n_images": 24, "n_clusters": 2, "copies_per_cluster": 2}}}


def _last_record():
    from copying_study.settings import HOOKS

    return HOOKS[0].record


def test_each_run_is_an_mlflow_run_with_manifest_and_audit_detects_tampering(kedro_project):
    run_kedro(kedro_project, ["ingest"], params=SMALL)
    record = _last_record()
    run_id = record["mlflow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["kedro.run_id"] == record["run_id"]
    assert run.data.tags["kedro.pipelines"] == "ingest"
    assert run.data.tags["dataset.saved.training_set"] == record["run_id"]
    assert run.data.params["ingest.resolution"] == "32"
    assert run.data.params["ingest.embedded.n_images"] == "24"
    assert run.data.metrics["n_images"] == 24 + 2 * 2

    manifest_path = kedro_project / "data/08_reporting/run_manifest.json" / record["run_id"] / "run_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["datasets_saved"]["training_set"] == record["run_id"]
    assert manifest["seeds"]["seed"] == 0
    assert manifest["parameters"]["ingest"]["embedded"]["n_images"] == 24
    assert {"torch", "kedro", "diffusers", "faiss-cpu", "python"} <= set(manifest["packages"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert "run_manifest.json" in artifacts

    out = io.StringIO()
    assert run_audit(run_id, kedro_project, out=out) == 0, out.getvalue()
    assert "ALL MATCH" in out.getvalue() and "training_set" in out.getvalue()
    second_run = _last_record()["mlflow_run_id"]
    assert second_run != run_id  # the audit's re-run is a new run and a new version

    # Tamper with the recorded table: the audit must fail and name it.
    table = kedro_project / "data/03_primary/training_set.parquet" / record["run_id"] / "training_set.parquet"
    df = pd.read_parquet(table)
    df.loc[0, "caption"] = "tampered"
    df.to_parquet(table)
    out = io.StringIO()
    assert run_audit(record["run_id"], kedro_project, out=out) == 1  # by Kedro run id this time
    text = out.getvalue()
    assert "MISMATCH" in text
    assert any(line.startswith("training_set") and "DIFFERS" in line and "caption" in line
               for line in text.splitlines()), text


def test_audit_reports_unknown_run_and_missing_inputs(kedro_project):
    out = io.StringIO()
    assert run_audit("no-such-run", kedro_project, out=out) == 2
    assert "no MLflow run 'no-such-run'" in out.getvalue()


def test_a_failed_run_writes_its_manifest_with_the_error(kedro_project, tmp_path):
    """A run that dies in a node leaves its record: status failed, the error and the node."""
    folder = tmp_path / "no_metadata"  # exists (so the run starts) but has no metadata file: the ingest node fails
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(Exception, match="metadata"):
        run_kedro(kedro_project, ["ingest"], params={"ingest": {"source": "imagefolder", "path": str(folder)}})
    (path,) = (kedro_project / "data/08_reporting/run_manifest.json").glob("*/run_manifest.json")
    manifest = json.loads(path.read_text())
    assert manifest["status"] == "failed" and manifest["failed_node"] == "ingest.ingest_training_set"
    assert "metadata.csv or metadata.jsonl" in manifest["error"]
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["copying_study"], output_format="list")
    assert run.info.status == "FAILED"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert "run_manifest.json" in artifacts


@pytest.mark.slow
def test_tracking_off_logs_no_run_and_still_writes_the_manifest(kedro_project, monkeypatch):
    monkeypatch.setenv("COPYING_STUDY_MLFLOW", "0")
    run_kedro(kedro_project, ["ingest"], params=SMALL)
    record = _last_record()
    assert "mlflow_run_id" not in record
    assert (kedro_project / "data/08_reporting/run_manifest.json" / record["run_id"] / "run_manifest.json").exists()
    assert (kedro_project / "data/08_reporting/ingest_metrics.json" / record["run_id"]).is_dir()
    if (kedro_project / "mlflow.db").exists():  # kedro-mlflow sets the store up with the context
        mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert mlflow.active_run() is None


@pytest.mark.slow
def test_kedro_mlflow_ui_serves_the_project_store(kedro_project):
    """`kedro mlflow ui` (kedro-mlflow's command, reading conf/base/mlflow.yml) starts the MLflow UI on the store."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    run_kedro(kedro_project, ["ingest"], params=SMALL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "PATH": f"{kedro.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # an activated venv
    proc = subprocess.Popen([str(kedro), "mlflow", "ui", "--port", str(port)], cwd=kedro_project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        body, deadline = None, time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search"
                                            "?max_results=10", timeout=5) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                time.sleep(1)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 120 s"
        assert "copying_study" in {e["name"] for e in body["experiments"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
