"""issue 13, "done when": ``evaluate_folder`` on real photographs that are copies and non-copies of a real training
set. The training set, its control set and the scored images are tiles of the photographs that ship with
scikit-learn, matplotlib and scikit-image (never generated images), ingested and de-duplicated by the pipelines.

The design, fixed before looking at any score: training = every other 96-px tile of scikit-learn's and matplotlib's
photographs (china, flower, grace_hopper); copies = each training tile after one copy transform (resize, JPEG,
crop, brightness, contrast, overlaid text, two of these); non-copies = the remaining tiles of the same three
photographs (hard: same photograph, other region) and tiles of six scikit-image photographs; control set = tiles of
three other scikit-image photographs. Pass: copy rate >= 95 % on the copies, <= 5 % on the non-copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from copying_study.descriptors.reference import copy_transformed, photo_tiles
from tests.conftest import run_kedro

TRAINING_PHOTOS = ["china", "flower", "grace_hopper"]
OTHER_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins"]
CONTROL_PHOTOS = ["brick", "moon", "immunohistochemistry"]


def write_folder(folder: Path, images, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, img in enumerate(images):
        names.append(f"{prefix}{k:03d}.png")
        img.save(folder / names[-1])
    pd.DataFrame({"file_name": names, "text": [f"{prefix} {k}" for k in range(len(names))]}).to_csv(
        folder / "metadata.csv", index=False)
    return names


@pytest.mark.slow
def test_evaluate_folder_separates_copies_from_non_copies_of_real_photographs(kedro_project, tmp_path):
    tiles, _ = photo_tiles(tile=96, photos=TRAINING_PHOTOS)
    training, hard = tiles[0::2], tiles[1::2]
    others, _ = photo_tiles(tile=96, photos=OTHER_PHOTOS)
    controls, _ = photo_tiles(tile=96, photos=CONTROL_PHOTOS)
    copies, transforms = copy_transformed(training, 0, "real_photos_test")
    write_folder(tmp_path / "train", training, "train")
    write_folder(tmp_path / "control", controls, "control")
    gens = tmp_path / "scored"
    names = write_folder(gens, copies + hard + others, "img")
    kind = ["copy"] * len(copies) + ["non-copy"] * (len(hard) + len(others))

    run_kedro(kedro_project, ["ingest", "dedup_clusters"], params={
        "ingest": {"source": "imagefolder", "path": str(tmp_path / "train"), "resolution": 96,
                   "control": {"path": str(tmp_path / "control")}}})
    # FID off: it is not what this test is about, and the bundled Inception takes minutes on a CPU
    run_kedro(kedro_project, ["evaluate_folder"], params={"evaluate": {"generations_path": str(gens),
                                                                       "fid": {"enabled": False}}})

    def latest(relative: str) -> Path:
        return sorted((kedro_project / relative).glob("*/*"))[-1]

    scores = pd.read_parquet(latest("data/07_model_output/replication_scores.parquet"))
    summary = json.loads(latest("data/08_reporting/replication_summary.json").read_text())
    by_name = dict(zip(scores["file_name"], scores["copy"], strict=True))
    flags = pd.Series([by_name[n] for n in names])
    is_copy = pd.Series([k == "copy" for k in kind])
    copy_rate_copies, copy_rate_others = flags[is_copy].mean(), flags[~is_copy].mean()
    assert copy_rate_copies >= 0.95, (copy_rate_copies, transforms)
    assert copy_rate_others <= 0.05, copy_rate_others
    assert summary["copy_threshold"] == pytest.approx(0.5) and summary["descriptor"]["name"] == "default"
    assert summary["controls"]["status"] == "passed", summary["controls"]
    assert summary["controls"]["negative"]["n"] == len(controls)
