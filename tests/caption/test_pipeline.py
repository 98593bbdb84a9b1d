"""The ``caption`` pipeline through Kedro: wiring, the skipped default, a missing model, and an uncaptioned
classfolders set of real photos ingested, captioned by a tiny BLIP, audited, and finetuned with ``caption_type:
blip`` and with MC."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from copying_study.pipelines.ingest.pipeline import create_pipeline
from tests.caption.tiny_models import write_photo_classfolders
from tests.conftest import run_kedro
from tests.finetune.helpers import TEST_TINY

SMALL = {"ingest": {"embedded": {"n_images": 24, "n_control": 4, "n_clusters": 2, "copies_per_cluster": 2}}}
CAPTION = {"n_sampled": 3, "max_new_tokens": 6, "batch_size": 4}
FINETUNE = {"tiny": TEST_TINY, "resolution": 16, "steps": 3, "batch_size": 4, "lr_warmup_steps": 1,
            "sample_prompts": 1, "sample_steps": 2, "sample_every": 0, "checkpoint_every": 0, "log_every": 1, "uncond_prob": 0.0,
            "duplication": "none", "train_text_encoder": False}


def latest(project, dataset: str, folder: str, ext: str = "parquet"):
    path = sorted((project / "data" / folder / f"{dataset}.{ext}").glob("*/*"))[-1]
    return pd.read_parquet(path) if ext == "parquet" else json.loads(path.read_text())


def last_record() -> dict:
    from copying_study.settings import HOOKS

    return HOOKS[0].record


def test_pipeline_shape_and_place_in_the_data_order():
    from kedro.framework.project import configure_project

    from copying_study.pipeline_registry import STAGES, register_pipelines

    configure_project("copying_study")
    pipe = create_pipeline().only_nodes("caption_training_set")
    assert pipe.inputs() == {"ingested_set", "params:caption", "params:seed", "params:device"}
    assert pipe.outputs() == {"training_set", "caption_metrics"}
    assert "caption" not in STAGES  # captioning is the last node of the ingest stage
    pipelines = register_pipelines()
    assert "ingest.caption_training_set" in {n.name for n in pipelines["ingest"].nodes}
    assert "ingest.caption_training_set" in {n.name for n in pipelines["__default__"].nodes}
    assert "training_set" in pipelines["dedup_clusters"].inputs()


def test_embedded_default_skips_with_a_reason_and_passes_the_table_through(kedro_project):
    from copying_study.data.embedded import generate_embedded

    run_kedro(kedro_project, ["ingest"], params=SMALL)
    training = latest(kedro_project, "training_set", "03_primary")
    expected = generate_embedded(seed=0, **{k: v for k, v in SMALL["ingest"]["embedded"].items() if k != "n_control"})
    pd.testing.assert_frame_equal(training, expected, check_dtype=False)  # exactly the ingested table
    metrics = latest(kedro_project, "caption_metrics", "08_reporting", "json")
    assert metrics["status"] == "skipped" and metrics["reason"].startswith("caption.model is null")
    assert metrics["n_images"] == len(training) and "checksums" not in metrics


def test_a_missing_model_stops_the_stage_before_any_caption_is_written(kedro_project, tmp_path):
    with pytest.raises(ValueError, match=r"caption.model: image-to-text model .*nope' does not exist.*real-weights.md"):
        run_kedro(kedro_project, ["ingest"], params={**SMALL, "caption": {"model": str(tmp_path / "nope")}})
    assert not (kedro_project / "data/03_primary/training_set.parquet").exists()


@pytest.mark.slow
def test_classfolders_are_captioned_audited_and_finetuned_with_blip_and_mc(kedro_project, tmp_path, tiny_blip):
    from copying_study.audit import run_audit

    photos = write_photo_classfolders(tmp_path / "photos", per_class=6)
    params = {"ingest": {"source": "classfolders", "path": str(photos), "resolution": 32,
                         "control": {"fraction": 0.2}},
              "caption": {"model": str(tiny_blip), **CAPTION}}
    run_kedro(kedro_project, ["ingest"], params=params)
    run_id = last_record()["mlflow_run_id"]
    captioned = latest(kedro_project, "training_set", "03_primary")
    metrics = latest(kedro_project, "caption_metrics", "08_reporting", "json")
    assert (captioned["caption"] == "").all() and len(captioned) >= 4  # uncaptioned data, captioned by the model
    assert all(len(c) == 4 and all(isinstance(x, str) for x in c) for c in captioned["blip_captions"])
    assert metrics["status"] == "captioned" and metrics["model_class"] == "BlipForConditionalGeneration"
    manifest = last_record()
    assert manifest["weights"]["caption_metrics.caption_model"] == metrics["weights_sha256"]

    out = io.StringIO()  # the captions are reproduced exactly: the audit re-runs ingest with its captioning
    assert run_audit(run_id, kedro_project, out=out) == 0, out.getvalue()
    assert any(line.startswith("training_set") and " match " in line for line in out.getvalue().splitlines())

    blip = dict(zip(captioned["image_id"], captioned["blip_captions"], strict=True))
    run_kedro(kedro_project, ["dedup_clusters", "finetune"],
              params={"finetune": {**FINETUNE, "caption_type": "blip"}})
    record = latest(kedro_project, "training_record", "06_models", "json")
    assert record["captions"] == {i: c[0] for i, c in blip.items() if i in record["captions"]}
    assert len(record["captions"]) == len(latest(kedro_project, "finetune_set", "05_model_input"))

    run_kedro(kedro_project, ["finetune"], params={"finetune": {**FINETUNE, "caption_type": "blip",
                                                                "mitigation": "mc"}})
    record = latest(kedro_project, "training_record", "06_models", "json")
    assert record["mitigation"] == "mc" and record["steps_run"] == 3


def test_base_needs_no_model_and_paper_names_blip_with_20_sampled_captions():
    from kedro.config import OmegaConfigLoader

    from copying_study.schemas import CaptionParams
    from tests.conftest import REPO

    def conf(env: str) -> dict:
        return OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env=env)["parameters"]

    assert CaptionParams.from_params(conf("base")["caption"]).model is None
    paper = CaptionParams.from_params(conf("paper")["caption"])
    assert paper.model == "Salesforce/blip-image-captioning-large"
    assert (paper.n_sampled, paper.per_image, paper.decoding, paper.num_beams, paper.top_p) == (20, 21, "beam", 3, 0.9)
    assert conf("paper")["ingest"]["classfolders"]["captions_file"] is None  # Imagenette: captions come from BLIP
