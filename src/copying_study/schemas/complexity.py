"""``complexity:`` — complexity of each generation's matched training image vs its similarity (docs/complexity.md).
Every key is required (``conf/base`` gives them all)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from copying_study.metrics.complexity import RESAMPLE_FILTERS
from copying_study.schemas._base import Params, similarity_or_calibrated


class ComplexityParams(Params):
    """The ``complexity:`` block. ``threshold: calibrated`` = the descriptor's copy threshold."""

    where: ClassVar[str] = "complexity"

    image_size: Annotated[int, Field(ge=8, le=4096)]
    resample: Literal[tuple(RESAMPLE_FILTERS)]
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    threshold: Any
    n_boot: Annotated[int, Field(ge=100, le=1_000_000)]
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)]

    _threshold = field_validator("threshold")(similarity_or_calibrated)
