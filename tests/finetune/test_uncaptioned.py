"""Uncaptioned class folders (``classfolders`` without a captions file): every stage that does not need captions
runs, says what it skipped, and the caption types meant for such data (fixed, class, random) train; those that need
captions stop before any work with one message. Data: crops of the real photographs shipped with scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from copying_study.data import dedup
from copying_study.data.captions import FALLBACK_WORDS
from copying_study.diffusion.train import make_plan
from tests.finetune.helpers import TEST_TINY, small

SEED = 1
NO_CAPTIONS = "the data has no captions"


def photo_folder(root: Path) -> Path:
    """Two classes of 6 photographs each (96-px crops of scikit-learn's china.jpg and flower.jpg), plus a byte copy
    of one (a duplicate cluster for dedup)."""
    from sklearn.datasets import load_sample_images

    for name, array in zip(("temple", "flower"), load_sample_images().images, strict=True):
        (root / name).mkdir(parents=True)
        for k in range(6):
            top, left = 40 + 50 * (k // 3), 60 + 150 * (k % 3)
            Image.fromarray(array[top:top + 96, left:left + 96]).save(root / name / f"{k}.jpg", quality=92)
    (root / "temple" / "0_copy.jpg").write_bytes((root / "temple" / "0.jpg").read_bytes())
    return root


def uncaptioned_table(n: int = 8) -> pd.DataFrame:
    """The training_set schema as classfolders writes it without captions: caption '' and captions []."""
    from tests.conftest import make_training_set

    table = make_training_set(n=n, size=16, seed=2, n_dup_clusters=0)
    table["caption"] = ""
    table["captions"] = [[] for _ in range(len(table))]
    return table


@pytest.mark.parametrize("caption_type", ["fixed", "class", "random"])
def test_caption_types_without_captions_plan_and_record_their_word_pool(caption_type):
    table = uncaptioned_table()
    plan = make_plan(table, small(caption_type=caption_type), SEED)
    if caption_type == "fixed":
        assert set(plan.base_captions) == {"An image"}
    elif caption_type == "class":
        assert set(plan.base_captions) == {f"An image of {c}" for c in table["class_label"]}
    else:
        words = {w for c in plan.base_captions for w in c.split()}
        assert words <= set(FALLBACK_WORDS) and len(set(plan.base_captions)) == len(table)
        assert any("FALLBACK_WORDS" in note for note in plan.notes)  # the fallback is recorded
    assert plan.vocabulary == sorted(FALLBACK_WORDS)


@pytest.mark.parametrize(("settings", "message"), [
    ({"caption_type": "original"}, "finetune.caption_type 'original' trains each image with its own caption, "
                                   "but the data has no captions"),
    ({"caption_type": "blip"}, "finetune.caption_type 'blip' trains each image with its BLIP caption"),
    ({"caption_type": "fixed", "mitigation": "mc"}, "finetune.mitigation 'mc' draws each image's caption"),
    ({"caption_type": "original", "duplication": "partial", "dup_fraction": 0.25, "ddf": 2.0},
     "finetune.caption_type 'original'"),
])
def test_settings_that_need_captions_stop_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message) as caught:
        make_plan(uncaptioned_table(), small(**settings), SEED)
    assert NO_CAPTIONS in str(caught.value) and "caption.model" in str(caught.value)  # what to do instead


def test_blip_captions_column_is_enough_for_the_blip_type():
    """Ingest's captioning step fills blip_captions: caption_type blip then trains on uncaptioned images."""
    table = uncaptioned_table()
    table["blip_captions"] = [[f"a photo number {i}"] for i in range(len(table))]
    plan = make_plan(table, small(caption_type="blip"), SEED)
    assert plan.base_captions == [f"a photo number {i}" for i in range(len(table))]


def test_caption_similarity_is_skipped_with_its_reason_and_caption_resampling_refuses():
    table = uncaptioned_table(6)
    clusters = pd.DataFrame({"image_id": table["image_id"], "cluster_id": [0, 0, 0, 1, 2, 3],
                             "cluster_size": [3, 3, 3, 1, 1, 1]})
    clusters["reportable"] = clusters["cluster_size"] >= 3
    params = {"caption_model": None, "max_caption_pairs": 10, "min_cluster_size": 3, "n_example_ids": 2,
              "mitigation": "resample_captions"}
    summary, _ = dedup.summarise(clusters, table, params, SEED)
    assert len(summary) == 1 and np.isnan(summary["caption_similarity"].iloc[0])
    assert summary["caption_pairs"].iloc[0] == 0
    assert summary["caption_similarity_method"].iloc[0].startswith("skipped: the data has no captions")
    with pytest.raises(ValueError, match="resample_captions.*3 clustered image\\(s\\) have no caption"):
        dedup.mitigate(table, clusters, params, SEED)


@pytest.mark.slow
def test_class_folders_of_photos_run_ingest_dedup_and_finetune_with_each_captionless_type(kedro_project, tmp_path):
    from copying_study.pipelines.generate.nodes import generate_settings, plan_generations
    from tests.conftest import run_kedro

    folder = photo_folder(tmp_path / "photos")
    data = {"ingest": {"source": "classfolders", "path": str(folder), "resolution": 32},
            "dedup": {"calibration": {"n_per_family": 20, "families": ["synthetic"]}}}
    run_kedro(kedro_project, ["ingest", "dedup_clusters"], params=data)
    reports = kedro_project / "data" / "08_reporting"
    (metrics_path,) = (reports / "dedup_metrics.json").glob("*/dedup_metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["n_images"] == 13 and metrics["n_clusters"] >= 1
    assert metrics["caption_similarity_method"].startswith("skipped: the data has no captions")

    train = {"tiny": TEST_TINY, "resolution": 16, "steps": 2, "batch_size": 4, "sample_every": 0,
             "sample_prompts": 0, "checkpoint_every": 0, "log_every": 1, "dup_fraction": 0.2, "ddf": 3}
    records = {}
    for caption_type in ("fixed", "class", "random"):
        run_kedro(kedro_project, ["finetune"], params={"device": "cpu",
                                                       "finetune": {**train, "caption_type": caption_type}})
        newest = sorted((kedro_project / "data/06_models/training_record.json").iterdir())[-1]
        records[caption_type] = json.loads((newest / "training_record.json").read_text())
        assert records[caption_type]["steps_run"] == 2
    assert set(records["fixed"]["captions"].values()) == {"An image"}
    assert set(records["class"]["captions"].values()) == {"An image of temple", "An image of flower"}
    assert any("FALLBACK_WORDS" in note for note in records["random"]["fallbacks"])

    with pytest.raises(Exception, match="caption_type 'original' trains each image with its own caption, but the "
                                        "data has no captions"):
        run_kedro(kedro_project, ["finetune"], params={"device": "cpu", "finetune": {**train}})

    # generate's `prompts: training` samples the captions the model was trained with: here the class captions
    generate = generate_settings({**json.loads(json.dumps(_generate_conf())), "n_images": 6})
    plan, _, _ = plan_generations(records["class"], generate, seed=0)
    assert set(plan["prompt"]) <= {"An image of temple", "An image of flower"}


def _generate_conf() -> dict:
    import yaml

    from tests.conftest import REPO

    return yaml.safe_load((REPO / "conf/base/parameters_generate.yml").read_text())["generate"]
