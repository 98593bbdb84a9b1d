"""Bad input never passes silently: each case is rejected with its reason (skip) or stops the run (fail)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copying_study.data.ingest import IngestError, ingest
from copying_study.data.readers import REJECT_REASONS
from copying_study.data.table import REJECT_COLUMNS
from tests.ingest.builders import encoded, photo, write_imagefolder, write_metadata, write_tar


def run(source, path, on_error="skip", **options):
    return ingest({"source": source, "path": str(path), "resolution": 16, "on_error": on_error, source: options}, 0)


def reasons(result) -> dict[str, str]:
    assert list(result.rejects.columns) == list(REJECT_COLUMNS)
    assert (result.rejects["source"] == result.metrics["source"]).all()
    return dict(zip(result.rejects["file_name"], result.rejects["reason"], strict=True))


def expect(tmp_path, source, path, file_name, reason, **options):
    """``file_name`` is rejected for ``reason`` under skip (the good images pass) and raises under fail."""
    result = run(source, path, **options)
    assert reasons(result) == {file_name: reason}
    assert result.metrics["rejected"][reason] == 1 and result.metrics["n_rejected"] == 1
    assert len(result.table) == result.metrics["n_images"] > 0
    with pytest.raises(IngestError, match=reason):
        run(source, path, on_error="fail", **options)


def test_unreadable_and_truncated_images(tmp_path):
    root = tmp_path / "hf"
    names = write_imagefolder(root, n=3)
    (root / names[1]).write_bytes(b"this is not an image")
    expect(tmp_path, "imagefolder", root, names[1], "unreadable_image")
    jpeg = encoded(photo(5, size=(200, 200)), "JPEG")
    (root / names[1]).write_bytes(jpeg[: len(jpeg) // 2])
    expect(tmp_path, "imagefolder", root, names[1], "truncated_image")


def test_unconvertible_mode(tmp_path, monkeypatch):
    from copying_study.utils.images import to_rgb

    def refuse_palette(img):
        if img.mode == "P":
            raise ValueError("conversion from P not supported")
        return to_rgb(img)

    monkeypatch.setattr("copying_study.data.ingest.to_rgb", refuse_palette)
    root = tmp_path / "hf"
    names = write_imagefolder(root, n=3)
    photo(1).convert("P").save(root / names[1])
    expect(tmp_path, "imagefolder", root, names[1], "unsupported_mode")


def test_missing_and_empty_captions(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=3, extra=False)
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "ok"}, {"file_name": "img_1.png", "text": "   "},
                          {"file_name": "img_2.jpg", "text": None}], fmt="jsonl")
    (root / "metadata.csv").unlink()
    result = run("imagefolder", root)
    assert reasons(result) == {"img_1.png": "empty_caption", "img_2.jpg": "missing_caption"}
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "ok"}, {"file_name": "img_1.png", "text": ""},
                          {"file_name": "img_2.jpg", "text": "fine"}])  # a CSV cell is never null: blank = empty
    (root / "metadata.jsonl").unlink()
    expect(tmp_path, "imagefolder", root, "img_1.png", "empty_caption")
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "ok"}, {"file_name": "img_1.png", "text": "fine"}])
    expect(tmp_path, "imagefolder", root, "img_2.jpg", "missing_caption")  # not listed in metadata


def test_duplicate_file_names(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=2, extra=False, fmt="jsonl")
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "a"}, {"file_name": "img_1.png", "text": "b"},
                          {"file_name": "./img_0.jpg", "text": "again"}], fmt="jsonl")
    expect(tmp_path, "imagefolder", root, "img_0.jpg", "duplicate_file_name")


def test_metadata_row_naming_a_missing_file(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=2, extra=False)
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "a"}, {"file_name": "img_1.png", "text": "b"},
                          {"file_name": "gone.png", "text": "c"}])
    expect(tmp_path, "imagefolder", root, "gone.png", "missing_file")


def test_invalid_metadata_line_and_escaping_file_name(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=2, extra=False, fmt="jsonl")
    with open(root / "metadata.jsonl", "a") as fh:
        fh.write("{not json\n")
    expect(tmp_path, "imagefolder", root, "metadata.jsonl:3", "invalid_metadata")
    write_metadata(root, [{"file_name": "img_0.jpg", "text": "a"}, {"file_name": "img_1.png", "text": "b"},
                          {"file_name": "../outside.png", "text": "c"}], fmt="jsonl")
    photo(1).save(tmp_path / "outside.png")
    expect(tmp_path, "imagefolder", root, "../outside.png", "invalid_file_name")


def test_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ingest({"source": "imagefolder", "path": str(tmp_path / "nope")}, 0)
    with pytest.raises(ValueError, match="ingest.path is required"):
        ingest({"source": "parquet"}, 0)
    with pytest.raises(ValueError, match="ingest.source = 'laion': expected 'embedded'"):
        ingest({"source": "laion", "path": str(tmp_path)}, 0)
    with pytest.raises(ValueError, match="ingest.on_error = 'ignore'"):
        ingest({"on_error": "ignore"}, 0)
    with pytest.raises(ValueError, match="ingest.resolution = 'big': expected an integer"):
        ingest({"resolution": "big"}, 0)
    with pytest.raises(ValueError, match=r"ingest\.imagefolder\.caption_col: unknown parameter"):
        ingest({"imagefolder": {"caption_col": "text"}}, 0)
    with pytest.raises(ValueError, match="ingest.sourse: unknown parameter"):
        ingest({"sourse": "embedded"}, 0)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    for source in ("imagefolder", "classfolders"):
        with pytest.raises(ValueError, match=f"no images found under '.*empty' \\(source {source}"):
            run(source, empty)
    with pytest.raises(ValueError, match="no .parquet files"):
        run("parquet", empty)
    with pytest.raises(ValueError, match="no tar shards"):
        run("webdataset", empty)
    photo(0).save(empty / "a.png")
    with pytest.raises(ValueError, match="no metadata.csv or metadata.jsonl"):
        run("imagefolder", empty)


def test_empty_result_is_an_error_naming_the_source(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=2)
    for name in ("img_0.jpg", "img_1.png"):
        (root / name).write_bytes(b"broken")
    with pytest.raises(IngestError, match=r"ingest.source=imagefolder at '.*hf' gave no images"):
        run("imagefolder", root)


def test_classfolders_bad_inputs(tmp_path):
    root = tmp_path / "classes"
    (root / "dog").mkdir(parents=True)
    for i in range(2):
        photo(i).save(root / "dog" / f"{i}.png")
    photo(9).save(root / "loose.png")
    expect(tmp_path, "classfolders", root, "loose.png", "no_class_folder")
    (root / "loose.png").unlink()
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"dog/0.png": ["a dog"], "dog/1.png": "another dog", "cat/9.png": "no such file"}))
    expect(tmp_path, "classfolders", root, "cat/9.png", "missing_file", captions_file=str(caps))
    caps.write_text(json.dumps({"dog/0.png": ["a dog"], "dog/1.png": ["", " "]}))
    expect(tmp_path, "classfolders", root, "dog/1.png", "empty_caption", captions_file=str(caps))
    caps.write_text(json.dumps({"dog/0.png": ["a dog"]}))
    expect(tmp_path, "classfolders", root, "dog/1.png", "missing_caption", captions_file=str(caps))
    with pytest.raises(ValueError, match="ingest.classfolders.captions_file: 'nope.json' does not exist"):
        run("classfolders", root, captions_file="nope.json")


def test_parquet_bad_inputs(tmp_path):
    good = encoded(photo(0))
    pq.write_table(pa.table({"image": [good, None, encoded(photo(1))], "text": ["a", "b", ""]}),
                   tmp_path / "t.parquet")
    result = run("parquet", tmp_path / "t.parquet")
    assert reasons(result) == {"t.parquet:1": "missing_image", "t.parquet:2": "empty_caption"}
    (tmp_path / "imgs").mkdir()
    photo(2).save(tmp_path / "imgs" / "x.png")
    pq.write_table(pa.table({"image": ["imgs/x.png", "imgs/x.png", "imgs/y.png"], "text": ["a", "b", "c"]}),
                   tmp_path / "paths.parquet")
    result = run("parquet", tmp_path / "paths.parquet")
    assert sorted(result.rejects["reason"]) == ["duplicate_file_name", "missing_file"]
    assert result.metrics["n_images"] == 1
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption'\]"):
        run("parquet", tmp_path / "paths.parquet", caption_column="caption")


def test_webdataset_bad_inputs(tmp_path):
    shards = tmp_path / "shards"
    img = encoded(photo(0), "JPEG")
    write_tar(shards / "a.tar", [("k1.jpg", img), ("k1.txt", b"one"), ("k2.json", b'{"caption": "no image"}'),
                                 ("k3.jpg", img), ("k3.json", b"{broken"), ("k4.png", encoded(photo(1))),
                                 ("k4.txt", b"  ")])
    write_tar(shards / "b.tar", [("k1.jpg", img), ("k1.txt", b"duplicate key"), ("k5.jpg", img), ("k5.txt", b"ok")])
    members = [(f"m{i}.{ext}", encoded(photo(i, size=(300, 300))) if ext == "png" else b"caption")
               for i in range(4) for ext in ("png", "txt")]
    full = write_tar(tmp_path / "c.tar", members)
    (shards / "c.tar").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    result = run("webdataset", shards)
    assert reasons(result) == {
        "a.tar/k2": "missing_image", "a.tar/k3": "invalid_metadata", "a.tar/k4.png": "empty_caption",
        "b.tar/k1": "duplicate_file_name", "c.tar": "unreadable_shard",
    }
    assert set(result.table.to_frame()["file_name"]) >= {"a.tar/k1.jpg", "b.tar/k5.jpg", "c.tar/m0.png"}
    assert "c.tar/m3.png" not in set(result.table.to_frame()["file_name"])
    with pytest.raises(IngestError, match="missing_image"):
        run("webdataset", shards, on_error="fail")


def test_metrics_list_every_reason(tmp_path):
    root = tmp_path / "hf"
    write_imagefolder(root, n=2)
    metrics = run("imagefolder", root).metrics
    assert set(metrics["rejected"]) == set(REJECT_REASONS)
    assert all(v == 0 for v in metrics["rejected"].values())
