"""Versioned parquet dataset for image tables that may not fit in memory as one DataFrame.

``save`` takes a DataFrame, an arrow Table, or any *iterable* of DataFrame / Table / RecordBatch chunks (e.g. a
:class:`copying_study.data.table.ChunkedTable`) and writes the chunks one at a time with a
``pyarrow.parquet.ParquetWriter``, to a ``.partial`` file renamed into place when complete (a failed save leaves
no version behind). ``load`` returns a pandas DataFrame (``load_args: {columns: [...]}`` to read only some columns)
with plain Python objects: strings, bytes, and lists for list columns.

A node should *return* the iterable rather than be a generator function: Kedro 1.7 saves a generator function's
outputs chunk by chunk, each as a separate ``save`` call, which a versioned dataset cannot do.

Catalog::

    training_set:
      type: copying_study.datasets.image_table.ImageTableDataset
      filepath: data/03_primary/training_set.parquet
      versioned: true
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version

from copying_study.data.table import PLANTED_COLUMN, TRAINING_COLUMNS, table_to_frame, training_schema

Chunk = pd.DataFrame | pa.Table | pa.RecordBatch


def _initial_schema(frame: pd.DataFrame) -> pa.Schema:
    """The arrow schema for a first DataFrame chunk: the fixed ``training_set`` schema for its columns, the
    inferred type for any other column (so an all-null ``class_label`` chunk does not fix the type to null)."""
    inferred = pa.Schema.from_pandas(frame, preserve_index=False)
    if not set(TRAINING_COLUMNS) <= set(frame.columns):
        return inferred
    known = training_schema(PLANTED_COLUMN in frame.columns)
    return pa.schema([known.field(n) if n in known.names else inferred.field(n) for n in frame.columns])


def _to_table(chunk: Chunk, schema: pa.Schema | None) -> pa.Table:
    if isinstance(chunk, pd.DataFrame):
        return pa.Table.from_pandas(chunk, schema=schema or _initial_schema(chunk), preserve_index=False)
    if isinstance(chunk, pa.RecordBatch):
        chunk = pa.Table.from_batches([chunk])
    if isinstance(chunk, pa.Table):
        return chunk if schema is None or chunk.schema.equals(schema) else chunk.select(schema.names).cast(schema)
    raise DatasetError(f"ImageTableDataset cannot save a chunk of type {type(chunk).__name__}")


def _chunks(data: Any) -> Iterator[Chunk]:
    if isinstance(data, (pd.DataFrame, pa.Table, pa.RecordBatch)):
        yield data
        return
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        yield from data
        return
    raise DatasetError(f"ImageTableDataset saves a DataFrame, a Table or an iterable of them, not {type(data).__name__}")


class ImageTableDataset(AbstractVersionedDataset[Any, pd.DataFrame]):
    """A (versioned) parquet file written chunk by chunk; see the module docstring."""

    def __init__(self, filepath: str, version: Version | None = None, load_args: dict[str, Any] | None = None,
                 save_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(PurePosixPath(filepath), version)
        self._load_args = dict(load_args or {})
        self._save_args = {"compression": "snappy", **(save_args or {})}
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        path = Path(str(self._get_load_path()))
        return table_to_frame(pq.read_table(str(path), **self._load_args))

    def save(self, data: Any) -> None:
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        writer: pq.ParquetWriter | None = None
        try:
            for chunk in _chunks(data):
                table = _to_table(chunk, writer.schema if writer is not None else None)
                if writer is None:
                    writer = pq.ParquetWriter(str(partial), table.schema, **self._save_args)
                writer.write_table(table)
            if writer is None and isinstance(getattr(data, "schema", None), pa.Schema):  # an empty chunked table
                writer = pq.ParquetWriter(str(partial), data.schema, **self._save_args)
                writer.write_table(data.schema.empty_table())
            if writer is None:
                raise DatasetError(f"nothing to save to {path}: the data has no chunks")
            writer.close()
            writer = None
            os.replace(partial, path)
        finally:
            if writer is not None:
                writer.close()
            if partial.exists():
                partial.unlink()

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).exists()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version, "load_args": self._load_args,
                "save_args": self._save_args}
