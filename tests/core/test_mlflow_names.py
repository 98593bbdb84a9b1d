"""The MLflow run of a default ``kedro run`` (reduced size) logs the same parameter, metric, tag and artifact names
as before the move to kedro-mlflow (``tests/data/mlflow_names_before_kedro_mlflow.json``, written by the project's
own hook at commit ca7aa0b with ``python -m tests.core.test_mlflow_names OUT``), and they come from where the catalog
says: metrics from the ``*_metrics_mlflow`` datasets, artifacts from the ``VersionedMlflowArtifactDataset`` entries.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_kedro
from tests.core.test_default_study_determinism import REDUCED

REFERENCE = Path(__file__).parents[1] / "data" / "mlflow_names_before_kedro_mlflow.json"
# MLflow's own system metrics are sampled every 10 s: how many names a short run gets depends on its speed
VOLATILE_PREFIXES = ("system/",)


def run_names(project: Path, run_id: str) -> dict[str, list[str]]:
    """The names of the run's parameters, metrics, tags (MLflow's own ``mlflow.*`` left out) and artifact files."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_id)

    def files(path: str | None = None) -> list[str]:
        out = []
        for item in client.list_artifacts(run_id, path):
            out.extend(files(item.path) if item.is_dir else [item.path])
        return out

    return {"params": sorted(run.data.params),
            "metrics": sorted(k for k in run.data.metrics if not k.startswith(VOLATILE_PREFIXES)),
            "tags": sorted(k for k in run.data.tags if not k.startswith("mlflow.")),
            "artifacts": sorted(files())}


# the reference was written with the defaults of its commit: the parameters that decide which metrics exist (a run
# whose generations include duplicated images' prompts logs duplicated_* metrics) are pinned to those
AS_WRITTEN = {**REDUCED, "finetune": {**REDUCED["finetune"], "dup_fraction": 0.05}}


def default_run_names(project: Path) -> dict[str, list[str]]:
    run_kedro(project, ["__default__"], params=AS_WRITTEN)
    from copying_study.settings import HOOKS

    return run_names(project, HOOKS[0].record["mlflow_run_id"])


@pytest.mark.slow
def test_default_run_logs_the_same_names_through_kedro_mlflow(kedro_project):
    now = default_run_names(kedro_project)
    before = json.loads(REFERENCE.read_text())
    for kind in ("params", "metrics", "tags", "artifacts"):
        missing = sorted(set(before[kind]) - set(now[kind]))
        assert not missing, f"{kind} logged before and not now: {missing}"
    # what kedro-mlflow adds: its run-parameter tags and the command that reproduces the run
    assert {"kedro_command", "run_id", "env"} <= set(now["tags"])
    assert not set(now["params"]) - set(before["params"]), "new parameter names"
    # every metric comes from a *_metrics output through its MlflowMetricsHistoryDataset
    assert set(now["metrics"]) == set(before["metrics"])
    assert "run_manifest.json" in now["artifacts"] and "dataset_versions.json" in now["artifacts"]


if __name__ == "__main__":  # write the reference: python -m tests.core.test_mlflow_names OUT (in a scratch folder)
    import os
    import shutil
    import tempfile

    from tests.conftest import REPO, use_tiny_base

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
        shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
        use_tiny_base(project / "conf")
        for sub in ("conf/local", "data", "src"):
            (project / sub).mkdir()
        os.chdir(project)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        Path(sys.argv[1]).write_text(json.dumps(default_run_names(project), indent=1) + "\n")
