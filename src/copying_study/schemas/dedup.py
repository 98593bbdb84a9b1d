"""``dedup:`` — copy descriptors, duplicate clusters, caption similarity and the pre-training mitigation
(docs/dedup.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from copying_study.descriptors.reference import FAMILIES
from copying_study.schemas._base import Params
from copying_study.search import BACKENDS, INDEX_KINDS

MITIGATIONS = ("none", "collapse", "resample_captions")


def check_descriptor_spec(spec: Any, runtime: bool = False) -> Any:
    """A descriptor block: ``name`` one of the descriptors and only the keys that descriptor takes (``runtime``:
    the overrides a recorded descriptor accepts: ``path``, ``batch_size``, ``device``, ``half``)."""
    if spec is None and runtime:
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError("expected a mapping (name, path, batch_size, ...)")
    from copying_study.descriptors import COMMON_KEYS, DESCRIPTOR_NAMES, EXTRA_KEYS, RUNTIME_KEYS

    if runtime:
        unknown = sorted(set(spec) - set(RUNTIME_KEYS) - {k for keys in EXTRA_KEYS.values() for k in keys})
        if unknown:
            raise ValueError(f"cannot override {unknown}: allowed keys are {', '.join(RUNTIME_KEYS)}")
        return dict(spec)
    name = spec.get("name", "default")
    if name not in DESCRIPTOR_NAMES:
        raise ValueError(f"descriptor name {name!r} is unknown: choose one of {', '.join(DESCRIPTOR_NAMES)}")
    unknown = sorted(set(spec) - {"name", *COMMON_KEYS, *EXTRA_KEYS[name]})
    if unknown:
        raise ValueError(f"descriptor {name!r} does not take {unknown}: allowed keys are "
                         f"{', '.join(COMMON_KEYS + EXTRA_KEYS[name])}")
    return dict(spec)


class SearchParams(Params):
    index: Literal[INDEX_KINDS] = "flat"
    nlist: Annotated[int, Field(ge=1)] | None = None
    nprobe: Annotated[int, Field(ge=1)] = 16
    k_start: Annotated[int, Field(ge=1)] = 32
    max_neighbors: Annotated[int, Field(ge=1)] = 2048
    chunk_size: Annotated[int, Field(ge=1)] = 8192
    backend: Literal[BACKENDS] = "faiss"


def check_engine(value: Any) -> Any:
    """``dedup.distributed``: ``auto``, true or false (``copying_study.search.sharded.dask_client``)."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("expected auto, true or false")


class ShardSizeParams(Params):
    """The Dask engine's shards (``dedup.distributed``)."""

    # images per task, rounded up to whole descriptor batches. 2048 = 8 batches of the default 256 (32 of SSCD's 64):
    # seconds (GPU) to minutes (CPU) of work, against milliseconds of task overhead and ~250 MB of 256-px PNGs to
    # ship; an 8M-image set still makes ~4000 tasks to balance over the workers, and a lost task redoes little
    descriptors: Annotated[int, Field(ge=1)] = 2048
    # rows per query shard and per index shard of the threshold graph. A 50k x 50k block of 512-d float32 is 2.6
    # TFLOP (~30 s on one core) on 200 MB of shards; 8M rows make 160 shards, ~13k upper-triangle blocks
    search: Annotated[int, Field(ge=1)] = 50_000


class GalleryParams(Params):
    n_clusters: Annotated[int, Field(ge=1)] = 8
    n_images: Annotated[int, Field(ge=1)] = 8


class CalibrationParams(Params):
    n_per_family: Annotated[int, Field(ge=20)] = 200
    families: Annotated[list[Literal[FAMILIES]], Field(min_length=1)] = ["embedded", "photos", "synthetic"]


class DedupParams(Params):
    """The ``dedup:`` block. ``descriptor`` replaces the default spec as a whole (it is not merged key by key)."""

    where: ClassVar[str] = "dedup"

    descriptor: dict[str, Any] = {"name": "default"}
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.75
    search: SearchParams = SearchParams()
    min_cluster_size: Annotated[int, Field(ge=1)] = 3
    caption_model: str | None = None
    max_caption_pairs: Annotated[int, Field(ge=1)] = 1000
    n_example_ids: Annotated[int, Field(ge=1)] = 5
    mitigation: Literal[MITIGATIONS] = "none"
    gallery: GalleryParams = GalleryParams()
    calibration: CalibrationParams = CalibrationParams()
    distributed: Any = "auto"
    distributed_shard_size: ShardSizeParams = ShardSizeParams()

    _descriptor = field_validator("descriptor")(check_descriptor_spec)
    _distributed = field_validator("distributed")(check_engine)
