"""complexity_analysis through a KedroSession on hand-made upstream tables: outputs, values, MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from copying_study.metrics.complexity import SCORE_COLUMNS, correlate_with_similarity, score_matches
from copying_study.utils.images import encode_png
from tests.conftest import make_training_set, run_kedro

# Used only where the upstream stages' catalog files do not (yet) define these inputs.
FALLBACK_CATALOG = {
    "training_set": {"type": "pandas.ParquetDataset", "filepath": "data/03_primary/training_set.parquet",
                     "versioned": True},
    "replication_scores": {"type": "pandas.ParquetDataset",
                           "filepath": "data/07_model_output/replication_scores.parquet", "versioned": True},
}


def extra_rows(kind: str, count: int, size: int = 32) -> list[dict]:
    """Training rows with the ``training_set`` schema: flat images or noise."""
    rng = np.random.default_rng(42 if kind == "noise" else 7)
    rows = []
    for i in range(count):
        if kind == "flat":
            arr = np.full((size, size, 3), 40 + 50 * i, dtype=np.uint8)
        else:
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        png = encode_png(Image.fromarray(arr))
        rows.append({"image_id": f"{kind}{i}", "image": png, "caption": f"{kind} {i}", "captions": [f"{kind} {i}"],
                     "class_label": kind, "source": "test", "file_name": f"{kind}{i}.png",
                     "sha256": hashlib.sha256(png).hexdigest(), "width": size, "height": size,
                     "planted_cluster": -1})
    return rows


def upstream_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training set with busy scenes plus flat and noise images, and generations that copy the flat ones."""
    training = pd.concat([make_training_set(n=12), pd.DataFrame(extra_rows("flat", 4) + extra_rows("noise", 4))],
                         ignore_index=True)
    rng = np.random.default_rng(0)
    scenes = training["image_id"][training["source"].eq("test") & training["class_label"].isin(
        ["circle", "square", "triangle"])].tolist()
    matches = [f"flat{i % 4}" for i in range(8)] + [f"noise{i % 4}" for i in range(8)] + scenes[:14]
    sims = np.concatenate([rng.uniform(0.75, 0.95, 8), rng.uniform(0.1, 0.3, 8), rng.uniform(0.3, 0.65, 14)])
    replication = pd.DataFrame({"gen_id": [f"gen{i:03d}" for i in range(len(matches))], "prompt": "p",
                                "match_image_id": matches, "top1_similarity": sims})
    return training, replication


def write_inputs(project: Path, training: pd.DataFrame, replication: pd.DataFrame) -> None:
    """Save the inputs where the project's catalog reads them (adding fallback entries the catalog lacks)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="base") as session:
        defined = session.load_context().config_loader["catalog"]
    missing = {name: entry for name, entry in FALLBACK_CATALOG.items() if name not in defined}
    if missing:
        (project / "conf" / "base" / "catalog_test_inputs.yml").write_text(yaml.safe_dump(missing))
    with KedroSession.create(project_path=project, env="base") as session:
        catalog = session.load_context().catalog
        catalog.save("training_set", training)
        catalog.save("replication_scores", replication)
        catalog.save("descriptor_calibration", {"copy_threshold": 0.6})  # complexity.threshold: calibrated


def latest(project: Path, relative: str) -> Path:
    versions = sorted((project / relative).iterdir())
    assert versions, f"no version of {relative}"
    return versions[-1] / Path(relative).name


@pytest.mark.slow
def test_pipeline_writes_scores_correlations_plots_and_mlflow_metrics(kedro_project):
    training, replication = upstream_tables()
    write_inputs(kedro_project, training, replication)
    run_kedro(kedro_project, ["complexity_analysis"], params={"seed": 3, "complexity": {"n_boot": 300}})

    scores = pd.read_parquet(latest(kedro_project, "data/07_model_output/complexity_scores.parquet"))
    assert list(scores.columns) == list(SCORE_COLUMNS) and len(scores) == 30
    report = json.loads(latest(kedro_project, "data/08_reporting/complexity_correlations.json").read_text())
    metrics = json.loads(latest(kedro_project, "data/08_reporting/complexity_metrics.json").read_text())

    # the same numbers as the library on the same inputs, parameters and seed
    expected_scores = score_matches(replication, training, size=32, resample="bicubic", jpeg_quality=90)
    pd.testing.assert_frame_equal(scores, expected_scores, check_dtype=False)
    expected = correlate_with_similarity(expected_scores, threshold=0.6, n_boot=300, confidence=0.95, seed=3)
    for measure in ("entropy", "jpeg_bytes", "total_variation"):
        for key in ("pearson_r", "pearson_p", "spearman_r", "spearman_ci", "pearson_ci", "n"):
            assert report[measure][key] == pytest.approx(expected[measure][key]), (measure, key)
        assert report[measure]["pearson_r"] < -0.5  # the flat images are the copied ones
    assert report["n_above_threshold"] == 8 + int((replication["top1_similarity"][16:] > 0.6).sum())
    assert report["settings"]["jpeg"]["quality"] == 90 and report["entropy_unit"] == "nats"
    assert report["entropy"]["bootstrap"]["n_boot"] == 300  # the runtime override reached the node
    assert metrics["complexity.entropy.pearson_r"] == pytest.approx(report["entropy"]["pearson_r"])

    for plot in ("complexity_density.png", "complexity_scatter.png"):
        with Image.open(latest(kedro_project, f"data/08_reporting/{plot}")) as img:
            assert img.size[0] > 1000 and img.size[1] > 300

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(kedro_project / 'mlflow.db').as_posix()}")
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("copying_study").experiment_id])[0]
    assert run.data.metrics["complexity.entropy.pearson_r"] == pytest.approx(report["entropy"]["pearson_r"])
    assert run.data.params["complexity.n_boot"] == "300"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "complexity_density_plot")}
    assert artifacts == {"complexity_density_plot/complexity_density.png"}
