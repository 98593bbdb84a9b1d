"""The ``finetune`` pipeline through Kedro (a few steps of the test model), and the paper configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from copying_study.diffusion.models import PixelShuffleAutoencoder, load_pipeline, weights_checksum
from copying_study.manifest import folder_checksum
from copying_study.pipelines.finetune import nodes
from copying_study.pipelines.finetune.pipeline import create_pipeline
from copying_study.schemas import FinetuneParams
from tests.conftest import REPO, make_training_set, run_kedro
from tests.finetune.helpers import TEST_TINY


def test_pipeline_shape():
    pipe = create_pipeline()
    assert pipe.inputs() == {"finetune_set", "params:finetune", "params:seed", "params:device", "kedro_run_id"}
    assert pipe.outputs() == {"finetuned_model", "training_record", "finetune_metrics_mlflow", "finetune_sample_grids"}
    assert "finetune_metrics" in pipe.all_outputs()  # the versioned JSON, copied to MLflow by log_finetune_metrics


def conf(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env=env)
    return loader["parameters"]


def test_base_and_paper_configs_validate_without_weights():
    base = FinetuneParams.from_params(conf("base")["finetune"])
    assert base.base_model == "embedded" and base.train_text_encoder and base.duplication == "full"
    paper = FinetuneParams.from_params(conf("paper")["finetune"])
    assert paper.base_model == "stabilityai/stable-diffusion-2-1"
    assert (paper.resolution, paper.batch_size, paper.steps) == (256, 16, 100_000)
    assert (paper.learning_rate, paper.lr_warmup_steps, paper.lr_schedule) == (5e-6, 10_000, "constant_with_warmup")
    assert paper.weight_decay == 1e-2 and paper.max_grad_norm == 1.0 and paper.random_flip
    assert not paper.train_text_encoder


def test_paper_config_fails_clearly_only_when_run_without_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    params = conf("paper")["finetune"]
    with pytest.raises(FileNotFoundError, match="stable-diffusion-2-1.*not in the local cache.*real-weights"):
        nodes.finetune_model(make_training_set(n=4, size=16), params, 0, "cpu", "a-run-id")


def write_finetune_set(project: Path, table) -> None:
    """Save ``finetune_set`` where the project's catalog reads it (adding an entry when dedup's catalog is absent)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="base") as session:
        defined = session.load_context().config_loader["catalog"]
    if "finetune_set" not in defined:
        entry = {"type": "pandas.ParquetDataset", "filepath": "data/05_model_input/finetune_set.parquet"}
        path = project / "conf" / "base" / "catalog_test_finetune_set.yml"
        path.write_text(yaml.safe_dump({"finetune_set": entry}))
    with KedroSession.create(project_path=project, env="base") as session:
        session.load_context().catalog.save("finetune_set", table)


def latest(project: Path, relative: str) -> Path:
    versions = sorted((project / relative).iterdir())
    assert len(versions) == 1, versions
    return versions[-1] / Path(relative).name


@pytest.mark.slow
def test_pipeline_trains_saves_a_loadable_model_record_metrics_and_grids(kedro_project, monkeypatch):
    project = kedro_project
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # MLflow's own (default 10 s)
    (project / "src").mkdir(exist_ok=True)
    table = make_training_set(n=10, size=16, seed=4)
    write_finetune_set(project, table)
    params = {
        "base_model": "tiny", "tiny": TEST_TINY, "resolution": 16, "steps": 6, "batch_size": 4, "log_every": 2, "sample_every": 3,
        "sample_prompts": 2, "sample_steps": 2, "checkpoint_every": 3, "duplication": "full", "dup_fraction": 0.2,
        "ddf": 4, "mitigation": "rt",
    }
    run_kedro(project, ["finetune"], params={"seed": 5, "device": "cpu", "finetune": params})

    record = json.loads(latest(project, "data/06_models/training_record.json").read_text())
    assert record["steps_run"] == 6 and record["device"] == "cpu" and record["seed"] == 5
    assert set(record["captions"]) == set(table["image_id"])
    assert record["captions"] == dict(zip(table["image_id"], table["caption"], strict=True))  # caption_type original
    assert len(record["duplicated_ids"]) == round(0.2 * len(table))
    assert record["mitigation"] == "rt" and record["vocabulary"] and "circle" in record["vocabulary"]
    assert record["components"]["vae"] == "PixelShuffleAutoencoder"
    assert record["checksums"]["base"] != record["checksums"]["finetuned"]
    assert record["settings"]["tiny"]["unet_channels"] == [32, 32]
    assert record["resumed_from_step"] is None
    assert not list((project / "data/06_models/finetune_checkpoints").rglob("*.pt"))  # the completed run cleaned up

    folder = latest(project, "data/06_models/finetuned_model")
    pipe = load_pipeline(str(folder))
    assert isinstance(pipe.vae, PixelShuffleAutoencoder)
    assert weights_checksum(pipe.unet, pipe.text_encoder) == record["checksums"]["finetuned"]
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 3)

    metrics = json.loads(latest(project, "data/08_reporting/finetune_metrics.json").read_text())
    assert [s for s, _ in metrics["train_loss"]] == [2, 4, 6]
    assert len(metrics["learning_rate"]) == 3 and metrics["samples_per_s"] > 0
    assert [s for s, _ in metrics["steps_per_s"]] == [2, 4, 6] and all(v > 0 for _, v in metrics["steps_per_s"])
    for (_, steps), (_, images) in zip(metrics["steps_per_s"], metrics["images_per_s"], strict=True):
        assert images == pytest.approx(steps * params["batch_size"])
    grids = latest(project, "data/08_reporting/finetune_sample_grids")
    assert sorted(p.name for p in grids.iterdir()) == ["step_0000003.png", "step_0000006.png"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["copying_study"], output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [2, 4, 6]
    throughput = mlflow.MlflowClient().get_metric_history(run.info.run_id, "images_per_s")
    assert [m.step for m in throughput] == [2, 4, 6]
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's system metrics, during finetuning
    assert run.data.tags["finetuned_model.path"] == str(folder.resolve())
    assert run.data.tags["finetuned_model.sha256"] == folder_checksum(folder)["sha256"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"finetune_sample_grids", "training_record"} <= artifacts
