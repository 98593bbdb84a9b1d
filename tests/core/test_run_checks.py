"""A run with bad parameters, or whose parameters name missing files or weights, stops before its first node with one
message naming each bad key (value, expected type) or missing path."""

from __future__ import annotations

from pathlib import Path

import pytest

from copying_study.run_checks import RunCheckError
from tests.conftest import run_kedro


def nothing_ran(project: Path) -> bool:
    return not (project / "data" / "03_primary").exists() and not list((project / "data").rglob("*.parquet"))


@pytest.mark.parametrize(("params", "message"), [
    ({"evaluate": {"k": "ten"}}, "evaluate.k = 'ten': expected an integer"),
    ({"evaluate": {"bootstrap": 5}}, "evaluate.bootstrap = 5: expected a mapping with keys n_boot, confidence"),
    ({"generate": {"copy_guard": {"enabled": "false"}}},
     "generate.copy_guard.enabled = 'false': expected true or false"),
    ({"evaluat": {"k": 3}}, "evaluat: unknown parameter"),
])
def test_a_bad_parameter_of_any_stage_stops_an_ingest_run_before_it_starts(kedro_project, params, message):
    with pytest.raises(RunCheckError) as caught:
        run_kedro(kedro_project, ["ingest"], params=params)
    assert message in str(caught.value) and "nothing was run" in str(caught.value)
    assert nothing_ran(kedro_project)


def test_the_paper_env_names_every_missing_input_and_weight_before_any_node(kedro_project, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))  # no model is cached here
    with pytest.raises(RunCheckError) as caught:
        run_kedro(kedro_project, ["__default__"], env="paper")
    text = str(caught.value)
    for line in (
        "ingest.path: classfolders source 'data/01_raw/imagenette2-320/train' does not exist",
        "caption.model: 'Salesforce/blip-image-captioning-large' is not a local folder and not in the local Hugging",
        "dedup.descriptor.path: SSCD TorchScript file 'data/01_raw/weights/sscd_disc_mixup.torchscript.pt' does not",
        "dedup.caption_model: 'openai/clip-vit-large-patch14' is not a local folder and not in the local Hugging Face",
        "finetune.base_model: 'stabilityai/stable-diffusion-2-1' is not a local folder",
        "evaluate.clipscore.model_path: 'openai/clip-vit-base-patch16' is not a local folder",
    ):
        assert line in text, text
    assert "inception" not in text  # conf/paper's FID uses the bundled standard Inception: nothing to provide
    assert nothing_ran(kedro_project)


def test_only_the_stages_that_run_are_checked_for_paths(kedro_project):
    """An evaluate-only check does not ask for the ingest folder (but its parameters are still all validated)."""
    from copying_study.run_checks import stage_blocks

    blocks = stage_blocks({"params:evaluate", "params:seed", "params:full_ddf5__s0.finetune", "training_set"})
    assert blocks == {"evaluate": ["params:evaluate"], "finetune": ["params:full_ddf5__s0.finetune"]}


def test_a_stage_run_alone_on_a_fresh_clone_says_what_to_run_first_without_a_traceback(kedro_project):
    """``kedro run --pipelines=evaluate`` through the CLI: one message naming each missing dataset, the stage that
    makes it and the command to run first; no Kedro traceback."""
    import subprocess
    import sys

    kedro = Path(sys.executable).parent / "kedro"
    done = subprocess.run([str(kedro), "run", "--pipelines=evaluate"], cwd=kedro_project, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Error: `kedro run --pipelines=evaluate` needs datasets that no earlier run has written" in out
    for line in ("generations: made by the generate stage", "training_record: made by the finetune stage",
                 "train_descriptors: made by the dedup_clusters stage", "training_set: made by the ingest stage",
                 "Run first: kedro run --pipelines=ingest,dedup_clusters,finetune,generate"):
        assert line in out, out
    assert "Traceback" not in out and len(out.splitlines()) < 60, out
    # stopped before kedro-mlflow opened a run (it creates the store and the experiment with the context)
    if (kedro_project / "mlflow.db").exists():
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
