"""The ``training_set`` and ``ingest_rejects`` table schemas, stable image ids, and chunked (streaming) tables.

The training table is written chunk by chunk so that a large source never sits in memory as one DataFrame:
:class:`ChunkedTableWriter` appends rows to a parquet file with a fixed arrow schema, and :class:`ChunkedTable` is a
re-iterable handle on such a file that yields one DataFrame per chunk (``copying_study.datasets.ImageTableDataset``
saves any iterable of chunks incrementally).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TRAINING_COLUMNS = (
    "image_id", "image", "caption", "captions", "class_label", "source", "file_name", "sha256", "width", "height",
)
PLANTED_COLUMN = "planted_cluster"
REJECT_COLUMNS = ("source", "file_name", "reason", "detail")


def training_schema(with_planted: bool = False) -> pa.Schema:
    """Arrow schema of ``training_set`` (``planted_cluster`` only for the embedded study set)."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("class_label", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("file_name", pa.string()),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int64(), nullable=False),
        pa.field("height", pa.int64(), nullable=False),
    ]
    if with_planted:
        fields.append(pa.field(PLANTED_COLUMN, pa.int64(), nullable=False))
    return pa.schema(fields)


def rejects_frame(rows: list[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The ``ingest_rejects`` table (``source``, ``file_name``, ``reason``, ``detail``), empty when no rows."""
    frame = pd.DataFrame(list(rows or []), columns=list(REJECT_COLUMNS))
    return frame.astype({c: "object" for c in REJECT_COLUMNS})


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def make_image_id(source: str, key: str, sha256: str) -> str:
    """A stable 16-hex id from the source type, the item's key in the source and the sha256 of its bytes.

    The same bytes under the same key give the same id on every run; an exact copy under another key gets
    another id.
    """
    return hashlib.sha256(f"{source}\x00{key}\x00{sha256}".encode()).hexdigest()[:16]


def table_from_rows(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """An arrow table with ``schema`` from row dicts (columns not in the schema are an error)."""
    names = schema.names
    for row in rows:
        extra = set(row) - set(names)
        if extra:
            raise ValueError(f"row has columns outside the training_set schema: {sorted(extra)}")
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in names}, schema=schema)


def frame_from_rows(rows: list[Mapping[str, Any]], with_planted: bool = False) -> pd.DataFrame:
    """A ``training_set`` DataFrame from row dicts, columns in schema order."""
    return table_to_frame(table_from_rows(rows, training_schema(with_planted)))


def table_to_frame(table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Arrow → pandas with plain Python objects for strings/bytes/lists (no arrow-backed extension dtypes)."""
    frame = table.to_pandas(types_mapper=None, strings_to_categorical=False)
    if "captions" in frame:
        frame["captions"] = [list(c) if c is not None else [] for c in frame["captions"]]
    for col in frame.columns:
        if pd.api.types.is_string_dtype(frame[col].dtype) and frame[col].dtype != object:
            frame[col] = frame[col].astype(object)
    return frame


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A ``ParquetFile`` for streaming: without pre-buffering, which (pyarrow 25) keeps every row group read so far
    in memory while ``iter_batches`` runs. Memory is then bounded by one row group's column chunks."""
    return pq.ParquetFile(str(path), pre_buffer=False)


class ChunkedTableWriter:
    """Append row dicts to a parquet file in chunks of ``chunk_rows`` rows (one row group per chunk)."""

    def __init__(self, path: Path, schema: pa.Schema, chunk_rows: int = 256):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.path = Path(path)
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.n_rows = 0
        self._buffer: list[Mapping[str, Any]] = []
        self._writer = pq.ParquetWriter(str(self.path), schema)

    def append(self, row: Mapping[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(table_from_rows(self._buffer, self.schema))
            self.n_rows += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> ChunkedTableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChunkedTable:
    """A re-iterable table backed by a parquet file: ``iter(table)`` yields DataFrames of ``batch_rows`` rows.

    It is iterable but not an iterator and its producer is not a generator function, so Kedro hands it to the
    dataset's ``save`` in one piece; ``ImageTableDataset`` then writes the chunks one at a time. Created with
    :meth:`temporary`, the backing folder is removed when the object is garbage-collected.
    """

    def __init__(self, path: Path, batch_rows: int = 256):
        self.path = Path(path)
        self.batch_rows = batch_rows

    @classmethod
    def temporary(cls, prefix: str = "copying_study_table_", batch_rows: int = 256) -> tuple[ChunkedTable, Path]:
        """A handle on ``<new temp dir>/table.parquet`` (not written yet) and that path."""
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        table = cls(folder / "table.parquet", batch_rows)
        weakref.finalize(table, shutil.rmtree, folder, True)
        return table, table.path

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(str(self.path))

    def __len__(self) -> int:
        return pq.ParquetFile(str(self.path)).metadata.num_rows

    def __iter__(self) -> Iterator[pd.DataFrame]:
        with open_parquet(self.path) as pf:
            for batch in pf.iter_batches(batch_size=self.batch_rows):
                yield table_to_frame(batch)

    def to_frame(self) -> pd.DataFrame:
        """The whole table in memory (small tables and tests only)."""
        return table_to_frame(pq.read_table(str(self.path)))

    def __repr__(self) -> str:
        return f"ChunkedTable({str(self.path)!r})"
