"""``ingest:`` — how a source becomes the ``training_set`` table (docs/ingest.md)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from copying_study.data.embedded import NEAR_COPY_OPS
from copying_study.data.readers import READERS
from copying_study.schemas._base import Params

SOURCES = ("embedded", *READERS)
ON_ERROR = ("skip", "fail")


def _caption_columns(value: Any) -> Any:
    """``auto`` or a list of column names."""
    if value == "auto" or (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        return value
    raise ValueError("expected 'auto' or a list of column names")


class ControlParams(Params):
    fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    path: str | None = None


class EmbeddedParams(Params):
    n_images: Annotated[int, Field(ge=1)] = 240
    n_control: Annotated[int, Field(ge=0)] = 64
    n_clusters: Annotated[int, Field(ge=0)] = 8
    copies_per_cluster: Annotated[int, Field(ge=0)] = 4
    n_captions: Annotated[int, Field(ge=1)] = 5
    exact_copies_per_cluster: Annotated[int, Field(ge=0)] = 1
    complexity_weights: list[float] = [1.0, 1.0, 1.0, 1.0]
    near_copy_ops: list[Literal[NEAR_COPY_OPS]] = list(NEAR_COPY_OPS)
    shuffle: bool = True


class ImageFolderParams(Params):
    caption_column: str = "text"
    extra_caption_columns: Any = "auto"
    label_column: str | None = None

    _columns = field_validator("extra_caption_columns")(_caption_columns)


class ClassFoldersParams(Params):
    captions_file: str | None = None


class ParquetParams(Params):
    image_column: str = "image"
    caption_column: str = "text"
    extra_caption_columns: Any = "auto"
    label_column: str | None = None
    key_column: str | None = None
    image_root: str | None = None

    _columns = field_validator("extra_caption_columns")(_caption_columns)


class WebDatasetParams(Params):
    caption_field: str = "caption"


class IngestParams(Params):
    """The ``ingest:`` block. Paths are checked by :mod:`copying_study.preflight` (only for runs that ingest)."""

    where: ClassVar[str] = "ingest"

    source: Literal[SOURCES] = "embedded"
    path: str | None = None
    resolution: Annotated[int, Field(ge=8, le=4096)] = 32
    on_error: Literal[ON_ERROR] = "skip"
    chunk_rows: Annotated[int, Field(ge=1)] = 256
    control: ControlParams = ControlParams()
    embedded: EmbeddedParams = EmbeddedParams()
    imagefolder: ImageFolderParams = ImageFolderParams()
    classfolders: ClassFoldersParams = ClassFoldersParams()
    parquet: ParquetParams = ParquetParams()
    webdataset: WebDatasetParams = WebDatasetParams()
