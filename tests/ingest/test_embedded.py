"""The embedded study set: schema, determinism, captions, planted clusters, complexity range."""

from __future__ import annotations

import numpy as np
import pytest

from copying_study.data.embedded import COLOURS, COMPLEXITY_LEVELS, SHAPES, generate_embedded
from copying_study.data.table import TRAINING_COLUMNS, make_image_id, sha256_hex
from copying_study.utils.images import decode_image

SMALL = {"n_images": 40, "n_clusters": 3, "copies_per_cluster": 4, "seed": 7}


@pytest.fixture(scope="module")
def small():
    return generate_embedded(**SMALL)


def test_schema_and_sizes(small):
    assert list(small.columns) == [*TRAINING_COLUMNS, "planted_cluster"]
    assert len(small) == 40 + 3 * 4
    assert small["image_id"].is_unique
    assert (small["source"] == "embedded").all()
    assert (small["width"] == 32).all() and (small["height"] == 32).all()
    for _, row in small.iterrows():
        img = decode_image(row["image"])
        assert img.size == (32, 32) and img.mode == "RGB"
        assert row["sha256"] == sha256_hex(row["image"])
        assert row["image_id"] == make_image_id("embedded", row["file_name"], row["sha256"])
        assert row["class_label"] in SHAPES


def test_deterministic_from_seed(small):
    again = generate_embedded(**SMALL)
    assert again["image_id"].tolist() == small["image_id"].tolist()
    assert again["image"].tolist() == small["image"].tolist()
    assert again["captions"].tolist() == small["captions"].tolist()
    other = generate_embedded(**{**SMALL, "seed": 8})
    assert set(other["sha256"]).isdisjoint(set(small["sha256"]))


def test_captions_are_specific_paraphrases(small):
    for _, row in small.iterrows():
        caps = row["captions"]
        assert len(caps) >= 5 and len(set(caps)) == len(caps)
        assert caps[0] == row["caption"]
        shape = row["class_label"]
        for cap in caps:
            assert shape in cap.lower()  # "cross" in "crosses", "circle" in "circles"
            assert sum(c in cap.lower() for c in COLOURS) >= 2  # object colour and background colour
            assert "background" in cap.lower()
    twenty = generate_embedded(n_images=3, n_clusters=0, n_captions=20, seed=1)
    assert all(len(set(c)) == 20 for c in twenty["captions"])


def test_planted_clusters(small):
    planted = small[small["planted_cluster"] >= 0]
    assert sorted(planted["planted_cluster"].unique()) == [0, 1, 2]
    for _, cluster in planted.groupby("planted_cluster"):
        assert len(cluster) == 5
        assert cluster["captions"].map(tuple).nunique() == 1  # copies keep their original's captions
        original = cluster[~cluster["file_name"].str.contains("_copy")]
        assert len(original) == 1
        orig = np.asarray(decode_image(original["image"].iloc[0]), np.float64)
        exact = cluster[cluster["file_name"].str.endswith("_exact.png")]
        assert len(exact) == 1 and exact["sha256"].iloc[0] == original["sha256"].iloc[0]
        near = cluster[cluster["file_name"].str.contains("_copy") & ~cluster["file_name"].str.endswith("_exact.png")]
        assert len(near) == 3
        for png in near["image"]:
            copy = np.asarray(decode_image(png), np.float64)
            assert np.abs(copy - orig).mean() > 0.5  # really altered
            assert np.abs(copy - orig).mean() < 40  # still a copy
    rest = small[small["planted_cluster"] == -1]
    assert rest["sha256"].is_unique and not set(rest["sha256"]) & set(planted["sha256"])


def test_near_copies_are_closer_to_their_original_than_other_scenes():
    df = generate_embedded(n_images=60, n_clusters=6, copies_per_cluster=3, exact_copies_per_cluster=0,
                           near_copy_ops=["jitter", "jpeg", "resize"], seed=3)
    pixels = {r.file_name: np.asarray(decode_image(r.image), np.float64) for r in df.itertuples()}
    scenes = [n for n in pixels if "_copy" not in n]
    for name in (n for n in pixels if "_copy" in n):
        dist = {s: np.sqrt(((pixels[name] - pixels[s]) ** 2).mean()) for s in scenes}
        assert min(dist, key=dist.get) == name.split("_copy")[0] + ".png"


def test_complexity_ranges_from_flat_to_busy():
    flat = generate_embedded(n_images=12, n_clusters=0, complexity_weights=[1, 0, 0, 0], seed=2)
    busy = generate_embedded(n_images=12, n_clusters=0, complexity_weights=[0, 0, 0, 1], seed=2)

    def colours(png: bytes) -> int:
        return len(np.unique(np.asarray(decode_image(png)).reshape(-1, 3), axis=0))

    flat_size = np.median(flat["image"].map(len))
    busy_size = np.median(busy["image"].map(len))
    assert busy_size > 3 * flat_size
    assert np.median(busy["image"].map(colours)) > 4 * np.median(flat["image"].map(colours))
    assert all("confetti" in c for c in busy["caption"]) and not any("confetti" in c for c in flat["caption"])
    assert len(COMPLEXITY_LEVELS) == 4


def test_other_resolution_and_no_shuffle():
    df = generate_embedded(n_images=5, n_clusters=1, copies_per_cluster=2, resolution=48, shuffle=False, seed=0)
    assert decode_image(df["image"].iloc[0]).size == (48, 48)
    assert df["file_name"].tolist()[:5] == [f"scene_{i:05d}.png" for i in range(5)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_images": 0}, "n_images"),
        ({"n_clusters": 50, "n_images": 10}, "n_clusters"),
        ({"exact_copies_per_cluster": 9}, "exact_copies_per_cluster"),
        ({"complexity_weights": [1, 1]}, "complexity_weights"),
        ({"near_copy_ops": ["blur"]}, "near_copy_ops"),
        ({"resolution": 4}, "resolution"),
        ({"n_captions": 10_000}, "n_captions"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        generate_embedded(**{"n_images": 10, "n_clusters": 2, **kwargs})
