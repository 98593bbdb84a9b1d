from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version

from copying_study.datasets import DescriptorsDataset, DiffusersPipelineDataset


def test_descriptors_dataset_versions_roundtrip(tmp_path):
    path = str(tmp_path / "train_descriptors.npz")
    emb = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    data = {"embeddings": emb, "image_ids": list("abcde"), "meta": {"name": "default", "preprocessing": {"s": 1}}}
    DescriptorsDataset(path, version=Version(None, "v1")).save(data)
    DescriptorsDataset(path, version=Version(None, "v2")).save({**data, "embeddings": emb * 2})
    latest = DescriptorsDataset(path, version=Version(None, None)).load()
    old = DescriptorsDataset(path, version=Version("v1", None)).load()
    assert np.array_equal(old["embeddings"], emb) and np.array_equal(latest["embeddings"], emb * 2)
    assert old["image_ids"] == list("abcde") and old["meta"] == {"name": "default", "preprocessing": {"s": 1},
                                                                 "dim": 3}


def test_descriptors_dataset_rejects_bad_shapes(tmp_path):
    ds = DescriptorsDataset(str(tmp_path / "d.npz"))
    with pytest.raises(DatasetError, match=r"\[N, d\]"):
        ds.save({"embeddings": np.zeros((3, 2)), "image_ids": ["a"], "meta": {}})


def test_descriptors_dataset_keeps_row_info(tmp_path):
    path = str(tmp_path / "d.npz")
    emb = np.ones((3, 2), np.float32)
    quality = np.array([100, 12, 0], np.int16)
    data = {"embeddings": emb, "image_ids": list("abc"), "meta": {"name": "pdq"},
            "row_info": {"quality": quality, "low_quality": quality < 50}}
    DescriptorsDataset(path).save(data)
    loaded = DescriptorsDataset(path).load()
    assert set(loaded["row_info"]) == {"quality", "low_quality"}
    assert np.array_equal(loaded["row_info"]["quality"], quality) and loaded["row_info"]["quality"].dtype == np.int16
    assert list(loaded["row_info"]["low_quality"]) == [False, True, True]
    DescriptorsDataset(path).save({k: v for k, v in data.items() if k != "row_info"})
    assert "row_info" not in DescriptorsDataset(path).load()
    with pytest.raises(DatasetError, match="row_info 'quality' must be a numeric array of 3 values"):
        DescriptorsDataset(path).save({**data, "row_info": {"quality": quality[:2]}})


def test_diffusers_dataset_roundtrip(tmp_path):
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    path = str(tmp_path / "model")
    DiffusersPipelineDataset(path, version=Version(None, "v1")).save(pipe)
    loaded = DiffusersPipelineDataset(path, version=Version(None, None)).load()
    for (k, a), b in zip(unet.state_dict().items(), loaded.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    as_path = DiffusersPipelineDataset(path, version=Version(None, None), load_args={"as_path": True}).load()
    assert as_path.endswith("v1/model")
    with pytest.raises(DatasetError, match="save_pretrained"):
        DiffusersPipelineDataset(str(tmp_path / "x"), version=Version(None, "v")).save(object())


class BrokenPipeline:
    """Writes part of a model folder, then fails (a full disk, a kill) in the middle of ``save_pretrained``."""

    def save_pretrained(self, path, safe_serialization=True):
        (Path(path) / "unet").mkdir(parents=True)
        (Path(path) / "model_index.json").write_text("{}")
        raise OSError("No space left on device")


def test_diffusers_dataset_save_is_atomic(tmp_path):
    root = tmp_path / "model"
    with pytest.raises(DatasetError, match="No space left on device"):
        DiffusersPipelineDataset(str(root), version=Version(None, "v1")).save(BrokenPipeline())
    assert not (root / "v1" / "model").exists()  # no half-written version a later run would load as the latest
    assert list((root / "v1").iterdir()) == []    # and no leftover temporary folder
    assert not DiffusersPipelineDataset(str(root), version=Version("v1", None)).exists()


def _artifact_dataset(tmp_path, version):
    from copying_study.datasets import VersionedMlflowArtifactDataset

    return VersionedMlflowArtifactDataset(dataset={"type": "json.JSONDataset",
                                                   "filepath": str(tmp_path / "data" / "record.json")},
                                          artifact_path="record", version=version)


def test_versioned_mlflow_artifact_dataset_saves_at_the_catalogs_version_and_logs_only_when_switched_on(
        tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ds = _artifact_dataset(tmp_path, Version(None, "2026-01-01T00.00.00.000Z"))
    ds.save({"a": 1})  # outside a tracked run: the file only, and no MLflow run started
    assert (tmp_path / "data/record.json/2026-01-01T00.00.00.000Z/record.json").exists()
    assert mlflow.active_run() is None and mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert _artifact_dataset(tmp_path, Version(None, None)).load() == {"a": 1}  # the newest version

    mlflow.set_experiment("artifact-dataset-test")  # not an experiment id an earlier test left selected
    with mlflow.start_run() as run:
        ds = _artifact_dataset(tmp_path, Version(None, "2026-01-02T00.00.00.000Z"))
        ds._logging_activated = True  # what ProjectMlflowHook does inside a tracked run
        ds.save({"a": 2})
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "record")] == ["record/record.json"]
    assert _artifact_dataset(tmp_path, Version("2026-01-01T00.00.00.000Z", None)).load() == {"a": 1}


def test_versioned_mlflow_artifact_dataset_refuses_a_versioned_inner_dataset(tmp_path):
    from copying_study.datasets import VersionedMlflowArtifactDataset

    with pytest.raises(DatasetError, match="put `versioned: true` on the entry"):
        VersionedMlflowArtifactDataset(dataset={"type": "json.JSONDataset", "filepath": str(tmp_path / "r.json"),
                                                "versioned": True})
