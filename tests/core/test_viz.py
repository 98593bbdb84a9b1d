"""`kedro viz build` works offline and shows every pipeline and the datasets with their layers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_kedro_viz_build_offline(kedro_project):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    kedro = Path(sys.executable).with_name("kedro")
    out = subprocess.run([str(kedro), "viz", "build"], cwd=kedro_project, env=env, capture_output=True, text=True,
                         timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "circular" not in log.lower(), log  # layers must follow the data's order or viz turns them off
    main = json.loads((kedro_project / "build" / "api" / "main").read_text())
    assert {"ingest", "dedup_clusters", "finetune", "generate", "evaluate", "complexity_analysis",
            "__default__"} <= {p["id"] for p in main["pipelines"]}
    layers = {n["name"]: n.get("layer") for n in main["nodes"] if n["type"] == "data"}
    assert layers["training_set"] == "primary"
    assert layers["train_descriptors"] == "feature"
    assert layers["generations"] == "model_output"
    assert layers["replication_summary"] == "reporting"
