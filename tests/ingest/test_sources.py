"""Each real source type end to end through ``copying_study.data.ingest.ingest`` (no Kedro)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from copying_study.data.ingest import ingest
from copying_study.data.table import TRAINING_COLUMNS, ChunkedTable, make_image_id, sha256_hex
from copying_study.utils.images import decode_image
from tests.ingest.builders import encoded, photo, write_imagefolder, write_metadata, write_tar


def run(source: str, path, resolution: int = 16, **options):
    """Ingest everything into the training table (no control split: these tests check every item)."""
    res = ingest({"source": source, "path": str(path), "resolution": resolution, source: options,
                  "control": {"fraction": 0.0}}, seed=0)
    table = res.table.to_frame() if isinstance(res.table, ChunkedTable) else res.table
    return table, res.rejects, res.metrics


def check_table(df: pd.DataFrame, source: str, resolution: int = 16) -> None:
    assert list(df.columns) == list(TRAINING_COLUMNS)
    assert (df["source"] == source).all()
    assert df["image_id"].is_unique
    for row in df.itertuples():
        assert decode_image(row.image).size == (resolution, resolution)
        assert (row.captions[0] if row.captions else "") == row.caption


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imagefolder(tmp_path, fmt):
    root = tmp_path / "hf"
    names = write_imagefolder(root, n=4, fmt=fmt)
    df, rejects, metrics = run("imagefolder", root)
    check_table(df, "imagefolder")
    assert df["file_name"].tolist() == names
    assert df["captions"].tolist() == [[f"caption {i}", f"another caption {i}"] for i in range(4)]
    raw = (root / names[0]).read_bytes()
    assert df["sha256"].iloc[0] == sha256_hex(raw)
    assert (df["width"] == 48).all() and (df["height"] == 40).all()
    assert df["class_label"].isna().all()
    assert rejects.empty and metrics["n_images"] == 4 and metrics["n_rejected"] == 0


def test_imagefolder_nested_lists_and_labels(tmp_path):
    root = tmp_path / "hf"
    (root / "a" / "b").mkdir(parents=True)
    photo(0).save(root / "a" / "top.png")
    photo(1).save(root / "a" / "b" / "deep.png")
    photo(2).save(root / "a" / "b" / "other.png")
    write_metadata(root / "a", [
        {"file_name": "top.png", "text": ["first", "second", ""], "label": "cat"},
        {"file_name": "b/deep.png", "text": "deep one", "captions": ["alt 1", "alt 2"], "label": "dog"},
    ], fmt="jsonl")
    write_metadata(root / "a" / "b", [{"file_name": "other.png", "text": '["x", "y"]', "caption_blip": "z"}])
    df, rejects, _ = run("imagefolder", root, label_column="label")
    by_name = df.set_index("file_name")
    assert by_name.loc["a/top.png", "captions"] == ["first", "second"]
    assert by_name.loc["a/b/deep.png", "captions"] == ["deep one", "alt 1", "alt 2"]
    assert by_name.loc["a/b/other.png", "captions"] == ["x", "y", "z"]
    assert by_name.loc["a/top.png", "class_label"] == "cat"
    assert rejects.empty


def test_classfolders_with_and_without_captions(tmp_path):
    root = tmp_path / "classes"
    for c, (cls, n) in enumerate((("n01440764", 2), ("n02102040", 3))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            photo(10 * c + i, size=(60, 30)).save(root / cls / f"{cls}_{i}.JPEG", format="JPEG")
    (root / "readme.txt").write_text("not an image")
    df, rejects, metrics = run("classfolders", root)
    check_table(df, "classfolders")
    assert sorted(df["class_label"].unique()) == ["n01440764", "n02102040"]
    assert (df["caption"] == "").all() and df["captions"].map(len).eq(0).all()
    assert metrics["n_without_caption"] == 5 and "no captions_file" in metrics["notes"]["captions"]
    assert rejects.empty

    # DCR-style mapping: keys are full paths as ImageFolder sees them, values lists of captions
    mapping = {f"./data/imagenette/train/{name}": [f"blip {name}", "second"] for name in df["file_name"]}
    (tmp_path / "caps.json").write_text(json.dumps(mapping))
    df2, rejects2, metrics2 = run("classfolders", root, captions_file=str(tmp_path / "caps.json"))
    assert df2["captions"].tolist() == [[f"blip {n}", "second"] for n in df2["file_name"]]
    assert metrics2["n_without_caption"] == 0 and rejects2.empty
    assert df2["image_id"].tolist() == df["image_id"].tolist()  # same bytes and keys -> same ids


def test_parquet_with_bytes_paths_and_hf_structs(tmp_path):
    imgs = [photo(i) for i in range(3)]
    pq.write_table(pa.table({
        "img": [encoded(im) for im in imgs],
        "caption": ["a", "b", "c"],
        "caption_extra": [["a2"], [], None],
        "cls": ["x", "y", "x"],
    }), tmp_path / "bytes.parquet")
    df, rejects, _ = run("parquet", tmp_path / "bytes.parquet", image_column="img", caption_column="caption",
                         label_column="cls")
    check_table(df, "parquet")
    assert df["captions"].tolist() == [["a", "a2"], ["b"], ["c"]]
    assert df["class_label"].tolist() == ["x", "y", "x"]
    assert df["file_name"].isna().all() and rejects.empty

    folder = tmp_path / "by_path"
    (folder / "images").mkdir(parents=True)
    for i, im in enumerate(imgs):
        im.save(folder / "images" / f"{i}.png")
    pq.write_table(pa.table({"path": [f"images/{i}.png" for i in range(3)], "text": ["p0", "p1", "p2"]}),
                   folder / "table.parquet")
    df2, _, _ = run("parquet", folder, image_column="path")
    assert df2["file_name"].tolist() == [f"images/{i}.png" for i in range(3)]
    assert df2["sha256"].tolist() == [sha256_hex((folder / "images" / f"{i}.png").read_bytes()) for i in range(3)]

    struct = pa.array([{"bytes": encoded(imgs[0]), "path": "zero.png"}, {"bytes": None, "path": "images/1.png"}],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct, "text": ["s0", "s1"]}), folder / "hf.parquet")
    df3, _, _ = run("parquet", folder / "hf.parquet")
    assert df3["file_name"].tolist() == ["zero.png", "images/1.png"]
    assert df3["caption"].tolist() == ["s0", "s1"]


def test_webdataset_shards(tmp_path):
    shards = tmp_path / "shards"
    for s in range(2):
        members = []
        for i in range(3):
            key = f"{s:05d}{i:04d}"
            members.append((f"{key}.jpg", encoded(photo(s * 10 + i), "JPEG")))
            if i != 1:
                members.append((f"{key}.txt", f"text {key}".encode()))
            members.append((f"{key}.json", json.dumps({"caption": f"json {key}", "url": "http://x"}).encode()))
        write_tar(shards / f"{s:05d}.tar", members)
    (shards / "00000.parquet").write_bytes(b"img2dataset metadata, ignored")
    (shards / "00000_stats.json").write_text("{}")
    df, rejects, metrics = run("webdataset", shards)
    check_table(df, "webdataset")
    assert len(df) == 6 and rejects.empty
    first = df.iloc[0]
    assert first["file_name"] == "00000.tar/000000000.jpg"
    assert first["captions"] == ["text 000000000", "json 000000000"]
    assert df.iloc[1]["captions"] == ["json 000000001"]  # no .txt: the json caption
    assert first["image_id"] == make_image_id("webdataset", "000000000", first["sha256"])


def test_ids_are_stable_across_runs_and_moves(tmp_path):
    root = tmp_path / "one"
    write_imagefolder(root)
    first, _, _ = run("imagefolder", root)
    second, _, _ = run("imagefolder", root, resolution=24)
    moved = tmp_path / "two"
    root.rename(moved)
    third, _, _ = run("imagefolder", moved)
    assert first["image_id"].tolist() == second["image_id"].tolist() == third["image_id"].tolist()
    (moved / "img_0.jpg").write_bytes(encoded(photo(99), "JPEG"))  # new bytes under the same name -> new id
    fourth, _, _ = run("imagefolder", moved)
    assert fourth["image_id"].iloc[0] != first["image_id"].iloc[0]
    assert fourth["image_id"].iloc[1:].tolist() == first["image_id"].iloc[1:].tolist()


def test_modes_are_converted_and_counted(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    base = photo(0)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent -> white
    images = {
        "rgba.png": rgba,
        "palette.png": base.convert("P"),
        "cmyk.jpg": base.convert("CMYK"),
        "grey16.png": Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257),
        "la.png": base.convert("LA"),
    }
    for name, img in images.items():
        img.save(root / name)
    write_metadata(root, [{"file_name": n, "text": n} for n in images])
    df, rejects, metrics = run("imagefolder", root)
    assert rejects.empty and len(df) == 5
    assert metrics["converted_modes"] == {"CMYK": 1, "I;16": 1, "LA": 1, "P": 1, "RGBA": 1}
    white = decode_image(df.set_index("file_name").loc["rgba.png", "image"])
    assert white.getextrema() == ((255, 255), (255, 255), (255, 255))
    grey = decode_image(df.set_index("file_name").loc["grey16.png", "image"])
    r, g, b = grey.split()
    assert r.tobytes() == g.tobytes() == b.tobytes() and r.getextrema()[1] > 150  # scaled, not clipped to white


def test_control_split_is_seeded_by_key_and_order_free(tmp_path):
    """A seeded share of a real source goes to control_set: the same items for the same seed whatever the order
    they arrive in, other items for another seed, and never an item in both tables."""
    from copying_study.data.ingest import is_control

    keys = [f"img{i:04d}.png" for i in range(2000)]
    picked = {k for k in keys if is_control(k, 0, 0.05)}
    assert 70 <= len(picked) <= 130  # binomial(2000, 0.05): mean 100, sd ~10
    assert picked == {k for k in reversed(keys) if is_control(k, 0, 0.05)}
    assert picked != {k for k in keys if is_control(k, 1, 0.05)}
    assert not any(is_control(k, 0, 0.0) for k in keys)

    folder = tmp_path / "src"
    write_imagefolder(folder, n=40)
    res = ingest({"source": "imagefolder", "path": str(folder), "resolution": 16, "control": {"fraction": 0.3}},
                 seed=0)
    train, control = res.table.to_frame(), res.control.to_frame()
    assert len(train) + len(control) == 40 and len(control) > 0
    assert not set(train["image_id"]) & set(control["image_id"])
    assert res.metrics["control"]["n_images"] == len(control)
    # a control folder of one's own: nothing is held out
    other = tmp_path / "ctl"
    write_imagefolder(other, n=5)
    res = ingest({"source": "imagefolder", "path": str(folder), "resolution": 16,
                  "control": {"path": str(other)}}, seed=0)
    assert len(res.table) == 40 and len(res.control) == 5 and res.metrics["control"]["path"] == str(other)
    with pytest.raises(ValueError, match="ingest.control.fraction"):
        ingest({"source": "imagefolder", "path": str(folder), "control": {"fraction": 1.5}}, seed=0)
    with pytest.raises(ValueError, match="ingest.control.path: control folder .* does not exist"):
        ingest({"source": "imagefolder", "path": str(folder), "control": {"path": str(tmp_path / "nope")}}, seed=0)
