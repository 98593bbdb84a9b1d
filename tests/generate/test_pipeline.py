"""The generate pipeline through a KedroSession, on upstream datasets saved into a temp project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from copying_study.descriptors import load_descriptor
from tests.conftest import run_kedro, save_datasets

from .conftest import small_pipeline
from .test_nodes import RECORD

PARAMS = {
    "seed": 4,
    "device": "cpu",
    "generate": {"n_images": 6, "images_per_prompt": 2, "steps": 3, "batch_size": 4, "mitigation": "cwr",
                 "copy_guard": {"enabled": True, "threshold": 0.995, "max_tries": 2, "mitigation": "rt"},
                 "grid_size": 4},
}


def latest(project: Path, relative: str) -> Path:
    return sorted((project / relative).iterdir())[-1] / Path(relative).name


@pytest.mark.slow
def test_generate_pipeline_writes_versioned_outputs_and_reruns_identically(kedro_project):
    (kedro_project / "src").mkdir(exist_ok=True)  # bootstrap_project wants the source dir; the package is installed
    rng = np.random.default_rng(0)
    d = load_descriptor({"name": "default"}, device="cpu")
    train = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(8)]
    descriptors = {"embeddings": d.encode(train), "image_ids": [f"img-{i:02d}" for i in range(8)], "meta": d.meta()}
    save_datasets(kedro_project, {"finetuned_model": small_pipeline(), "training_record": RECORD,
                                  "train_descriptors": descriptors,
                                  "descriptor_calibration": {"copy_threshold": 0.5, "descriptor": descriptors["meta"]}})

    run_kedro(kedro_project, ["generate"], params=PARAMS)
    table = pd.read_parquet(latest(kedro_project, "data/07_model_output/generations.parquet"))
    metrics = json.loads(latest(kedro_project, "data/08_reporting/generate_metrics.json").read_text())
    record = json.loads(latest(kedro_project, "data/08_reporting/generate_record.json").read_text())
    assert latest(kedro_project, "data/08_reporting/generations_grid.png").stat().st_size > 0
    assert len(table) == 6 and table["gen_id"].is_unique
    assert (table["mitigation"] == "cwr").all() and (table["prompt"] != table["original_prompt"]).all()
    assert set(table["source_image_id"]) <= set(RECORD["captions"])
    assert metrics["n_images"] == 6 and metrics["guard_enabled"] == 1 and metrics["prompt_changed_fraction"] == 1
    assert record["sampler"]["steps"] == 3 and record["copy_guard"]["descriptor"]["name"] == "default"

    run_kedro(kedro_project, ["generate"], params=PARAMS)
    assert len(list((kedro_project / "data/07_model_output/generations.parquet").iterdir())) == 2
    again = pd.read_parquet(latest(kedro_project, "data/07_model_output/generations.parquet"))
    assert again["image"].tolist() == table["image"].tolist()
    assert again["prompt"].tolist() == table["prompt"].tolist() and again["seed"].tolist() == table["seed"].tolist()
