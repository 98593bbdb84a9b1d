"""The whole default study at a reduced size is bit-identical on CPU: `copying-study audit` re-runs it and every
table, JSON, descriptor file, model weight file, image and MLflow metric matches exactly."""

import io

import pytest

from copying_study.audit import run_audit
from tests.conftest import run_kedro

REDUCED = {
    "ingest": {"embedded": {"n_images": 30, "n_clusters": 2, "copies_per_cluster": 2}},
    "finetune": {"steps": 6, "batch_size": 8, "sample_every": 3, "sample_prompts": 2, "checkpoint_every": 3,
                 "log_every": 2},
    "generate": {"n_images": 8, "steps": 3, "batch_size": 4, "grid_size": 4},
    "evaluate": {"bootstrap": {"n_boot": 100}},
    "complexity": {"n_boot": 100},
}


@pytest.mark.slow
def test_default_study_reruns_bit_identically(kedro_project):
    run_kedro(kedro_project, ["__default__"], params=REDUCED)
    from copying_study.settings import HOOKS

    record = HOOKS[0].record
    assert {"training_set", "finetuned_model", "generations", "replication_summary",
            "complexity_correlations"} <= set(record["datasets_saved"])
    measurement = record["measurement"]  # the run manifest carries the calibration and the controls' verdicts
    assert measurement["descriptor_calibration"]["copy_threshold"] == 0.5
    assert measurement["descriptor_calibration"]["families"]["photos"]["recall"] >= 0.95
    assert measurement["controls"]["replication_summary"]["status"] in ("passed", "FAILED")
    out = io.StringIO()
    code = run_audit(record["mlflow_run_id"], kedro_project, out=out)
    text = out.getvalue()
    assert code == 0, text
    for name in ("finetuned_model", "generations", "replication_scores", "replication_summary", "complexity_scores"):
        assert any(line.startswith(name) and " match " in line for line in text.splitlines()), (name, text)
