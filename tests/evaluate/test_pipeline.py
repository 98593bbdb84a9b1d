"""evaluate and evaluate_folder through a KedroSession on upstream datasets saved into a temp project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copying_study.descriptors import load_descriptor
from copying_study.metrics import fid as fid_metrics
from copying_study.utils.images import decode_image
from tests.conftest import make_training_set, run_kedro, save_datasets
from tests.evaluate.test_nodes import calibration_for, make_generations

PARAMS = {"seed": 5, "device": "cpu", "evaluate": {"bootstrap": {"n_boot": 200}, "plots": {"gallery_n": 6}}}


@pytest.fixture
def project(kedro_project: Path) -> Path:
    (kedro_project / "src").mkdir(exist_ok=True)  # bootstrap_project wants the source dir; the package is installed
    return kedro_project


def training_inputs() -> dict:
    """What ingest and dedup_clusters would have saved: training and control sets, descriptors, calibration and
    (every image its own) duplicate clusters."""
    from copying_study.descriptors.reference import synthetic_photos
    from copying_study.utils.images import encode_png

    training = make_training_set()
    d = load_descriptor({"name": "default"}, device="cpu")
    emb = d.encode([decode_image(b) for b in training["image"]])
    control = pd.DataFrame({"image_id": [f"control{k}" for k in range(24)],
                            "image": [encode_png(i) for i in synthetic_photos(24, size=32, seed=5)]})
    clusters = pd.DataFrame({"image_id": training["image_id"], "cluster_id": np.arange(len(training)),
                             "cluster_size": 1})
    return {"training_set": training, "control_set": control, "duplicate_clusters": clusters,
            "descriptor_calibration": calibration_for(d.meta()),
            "train_descriptors": {"embeddings": emb, "image_ids": training["image_id"].tolist(), "meta": d.meta()}}


def versions(project: Path, relative: str) -> list[Path]:
    return sorted((project / relative).iterdir())


def latest(project: Path, relative: str) -> Path:
    return versions(project, relative)[-1] / Path(relative).name


@pytest.mark.slow
def test_evaluate_pipeline_outputs_metrics_and_load_versions(project):
    inputs = training_inputs()
    training = inputs["training_set"]
    gens = make_generations(training).drop(columns=["kind"])
    record = {"duplicated_ids": training["image_id"][:3].tolist(), "duplication": "full", "steps": 10}
    save_datasets(project, {**inputs, "generations": gens.iloc[:10], "training_record": record})
    first = versions(project, "data/07_model_output/generations.parquet")[0].name
    save_datasets(project, {"generations": gens})  # a newer version with all 16 generations

    run_kedro(project, ["evaluate"], params=PARAMS)
    scores = pd.read_parquet(latest(project, "data/07_model_output/replication_scores.parquet"))
    summary = json.loads(latest(project, "data/08_reporting/replication_summary.json").read_text())
    metrics = json.loads(latest(project, "data/08_reporting/evaluate_metrics.json").read_text())
    assert len(scores) == 16 and summary["n_generations"] == 16  # the latest generations version
    for col in ("gen_id", "file_name", "top1_similarity", "match_image_id", "topk_ids", "topk_scores", "prompt",
                "source_image_id", "source_duplicated"):
        assert col in scores.columns
    assert summary["dataset_similarity"] == pytest.approx(np.percentile(scores["top1_similarity"], 95))
    # the default FID: the bundled standard Inception (evaluate.fid.inception_path: null), recorded
    assert summary["fid"] > 0 and summary["frechet_distance"] is not None
    assert summary["fid_info"]["inception_sha256"] == fid_metrics.BUNDLED_SHA256
    assert summary["fid_info"]["network"].startswith("bundled") and summary["fid_info"]["n_fake"] == 16
    assert summary["splits"]["source_duplicated"]["duplicated"]["n"] == 1
    assert summary["inputs"]["generations"] == "generations table" and summary["inputs"]["finetuning_record"]
    assert summary["descriptor"]["name"] == "default"
    assert metrics["dataset_similarity"] == pytest.approx(summary["dataset_similarity"])
    assert summary["copy_threshold"] == 0.5 and metrics["copy_rate"] == pytest.approx(summary["copy_rate"])
    assert summary["controls"]["status"] == "passed" and metrics["controls_passed"] == 1.0
    controls = pd.read_parquet(latest(project, "data/07_model_output/replication_controls.parquet"))
    assert (controls["control"] == "negative").sum() == 24
    for png in ("replication_histogram.png", "replication_gallery.png"):
        assert latest(project, f"data/08_reporting/{png}").stat().st_size > 5000

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(project / 'mlflow.db').as_posix()}")
    run = mlflow.search_runs(experiment_names=["copying_study"], output_format="list")[0]
    assert run.data.metrics["dataset_similarity"] == pytest.approx(summary["dataset_similarity"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "replication_gallery")}
    assert artifacts, "the gallery was not logged to MLflow"
    assert run.data.tags["controls"] == "passed" and run.data.tags["copy_threshold"] == "0.5"

    # an older input version, pinned as with --load-versions (Inception FID off to keep the test short)
    quick = {**PARAMS, "evaluate": {**PARAMS["evaluate"], "fid": {"enabled": False}}}
    run_kedro(project, ["evaluate"], params=quick, load_versions={"generations": first})
    old = json.loads(latest(project, "data/08_reporting/replication_summary.json").read_text())
    assert old["n_generations"] == 10 and old["fid"] is None and "disabled" in old["fid_info"]["reason"]
    assert old["frechet_distance"] > 0 and "not FID" in old["frechet_features"]  # the stand-in, named


@pytest.mark.slow
def test_evaluate_folder_pipeline_needs_no_generations_or_record(project, tmp_path):
    inputs = training_inputs()
    save_datasets(project, inputs)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    rows = []
    for i, data in enumerate(inputs["training_set"]["image"][:5]):
        decode_image(data).save(folder / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": f"prompt {i}"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    # `evaluate` needs the generations table and the finetuning record, which this project never made: the run
    # checks name each missing input and the stage that makes it before any node runs
    with pytest.raises(Exception, match=r"(?s)nothing was run.*generations: made by the generate stage.*"
                                        r"training_record: made by the finetune stage"):
        run_kedro(project, ["evaluate"], params=PARAMS)

    run_kedro(project, ["evaluate_folder"], params={**PARAMS, "evaluate": {**PARAMS["evaluate"],
                                                                          "generations_path": str(folder)}})
    scores = pd.read_parquet(latest(project, "data/07_model_output/replication_scores.parquet"))
    summary = json.loads(latest(project, "data/08_reporting/replication_summary.json").read_text())
    assert sorted(scores["file_name"]) == [f"img{i}.png" for i in range(5)]
    assert scores["top1_similarity"].min() > 0.999  # exact copies of training images
    assert "skipped" in summary["splits"]["source_duplicated"]
    assert "finetuning record" in summary["splits"]["source_duplicated"]["skipped"]
    assert summary["inputs"] == {"generations": "folder", "generations_path": str(folder),
                                 "finetuning_record": False}

