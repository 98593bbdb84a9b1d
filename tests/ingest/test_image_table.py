"""``ImageTableDataset`` (chunked, versioned parquet) and the chunked-table helpers."""

from __future__ import annotations

import gc

import pandas as pd
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version

from copying_study.data.table import ChunkedTable, ChunkedTableWriter, frame_from_rows, training_schema
from copying_study.datasets.image_table import ImageTableDataset
from tests.conftest import make_training_set


def rows(df: pd.DataFrame) -> list[dict]:
    return df.drop(columns=["planted_cluster"]).to_dict("records")


def test_saves_chunks_and_loads_one_frame(tmp_path):
    df = make_training_set(n=10)
    df.loc[:4, "class_label"] = None  # first chunk all-null: must not fix the column type to null
    chunks = [df.iloc[:5], df.iloc[5:9], df.iloc[9:]]
    ds = ImageTableDataset(str(tmp_path / "t.parquet"))
    ds.save(chunks)
    back = ds.load()
    assert back["captions"].map(type).eq(list).all()
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df.reset_index(drop=True).astype(back.dtypes))
    only = ImageTableDataset(str(tmp_path / "t.parquet"), load_args={"columns": ["image_id", "caption"]}).load()
    assert list(only.columns) == ["image_id", "caption"]


def test_chunked_table_round_trip_and_versions(tmp_path):
    df = make_training_set(n=7)
    table, path = ChunkedTable.temporary(batch_rows=3)
    with ChunkedTableWriter(path, training_schema(False), chunk_rows=2) as writer:
        for r in rows(df):
            writer.append(r)
    assert writer.n_rows == len(df) == len(table)
    sizes = [len(c) for c in table]
    assert sizes == [3] * (len(df) // 3) + [len(df) % 3] * bool(len(df) % 3)  # batch_rows at a time
    assert [len(c) for c in table] == sizes  # re-iterable
    assert list(iter(table))[0]["image_id"].tolist() == df["image_id"].tolist()[:3]
    v1 = ImageTableDataset(str(tmp_path / "v.parquet"), version=Version(None, "2024-01-01T00.00.00.000Z"))
    v1.save(table)
    v2 = ImageTableDataset(str(tmp_path / "v.parquet"), version=Version(None, "2024-01-02T00.00.00.000Z"))
    v2.save(frame_from_rows(rows(df)[:2]))
    assert len(ImageTableDataset(str(tmp_path / "v.parquet"), version=Version(None, None)).load()) == 2  # latest
    old = ImageTableDataset(str(tmp_path / "v.parquet"), version=Version("2024-01-01T00.00.00.000Z", None)).load()
    assert old["image_id"].tolist() == df["image_id"].tolist()
    folder = path.parent
    del table
    gc.collect()
    assert not folder.exists()  # the temporary backing file is removed with its handle


def test_failed_save_leaves_nothing(tmp_path):
    df = make_training_set(n=4)

    def broken():
        yield df.iloc[:2]
        raise RuntimeError("source broke")

    ds = ImageTableDataset(str(tmp_path / "f.parquet"))
    with pytest.raises(DatasetError, match="source broke"):
        ds.save(broken())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="cannot save|saves a DataFrame"):
        ds.save(42)
    with pytest.raises(DatasetError, match="no chunks"):
        ds.save([])
    assert not ds.exists()


def test_row_schema_is_enforced():
    with pytest.raises(ValueError, match="outside the training_set schema"):
        frame_from_rows([{**rows(make_training_set(n=1))[0], "extra": 1}])
