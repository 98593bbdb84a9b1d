"""``study:`` — the experiment grid (docs/study.md): train cells, inference cells, seeds, shared overrides."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from copying_study.schemas._base import Params

STAGES: tuple[str, ...] = ("finetune", "generate", "evaluate", "complexity")
"""The parameter blocks a cell may override (``params:<stage>``)."""
INFERENCE_STAGES: tuple[str, ...] = ("generate", "evaluate", "complexity")
"""The blocks an inference cell may override (it reuses its train cell's model)."""
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SEED_SEPARATOR = "__s"


class StageOverrides(Params):
    """Overrides of the stage parameters (merged key by key over them)."""

    finetune: dict[str, Any] | None = None
    generate: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    complexity: dict[str, Any] | None = None

    def overrides(self) -> dict[str, dict[str, Any]]:
        """The stages this cell overrides, ``{stage: overrides}``."""
        return {stage: dict(value) for stage in STAGES if (value := getattr(self, stage, None)) is not None}


class InferenceCell(Params):
    """An inference cell: a train cell's model (``from``), sampled or evaluated differently."""

    source: str = Field(alias="from")
    generate: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    complexity: dict[str, Any] | None = None

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {stage: dict(value) for stage in INFERENCE_STAGES if (value := getattr(self, stage)) is not None}


class ReportParams(Params):
    gallery_n: Annotated[int, Field(ge=0)] = 6


STATISTIC_NAMES = ("copy_rate", "copy_rate_duplicated", "copy_rate_not_duplicated", "dataset_similarity")


class Comparison(Params):
    """One of the paper's stated differences: cell ``a`` minus cell ``b`` is expected to be ``greater`` (or
    ``less``) than 0, for each statistic (copy_study.study.findings.STATISTICS)."""

    finding: str
    a: str
    b: str
    expect: Literal["greater", "less"]
    statistics: Annotated[list[Literal[STATISTIC_NAMES]], Field(min_length=1)] = ["copy_rate", "dataset_similarity"]


class IntervalParams(Params):
    """The two-stage bootstrap of the study's intervals (copying_study.metrics.intervals)."""

    n_boot: Annotated[int, Field(ge=100)] = 2000
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95


class StudyParams(Params):
    """The ``study:`` block."""

    where: ClassVar[str] = "study"

    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    train_cells: Annotated[dict[str, StageOverrides | None], Field(min_length=1)]
    inference_cells: dict[str, InferenceCell] = {}
    shared: StageOverrides = StageOverrides()
    report: ReportParams = ReportParams()
    comparisons: list[Comparison] = []
    intervals: IntervalParams = IntervalParams()

    @field_validator("inference_cells", "shared", "report", "intervals", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("comparisons", mode="before")
    @classmethod
    def _no_comparisons(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _grid(self) -> StudyParams:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        train, inference = self.train_cells, self.inference_cells
        for name in [*train, *inference]:
            if not NAME_PATTERN.match(name) or SEED_SEPARATOR in name:
                raise ValueError(f"cell name {name!r} is not allowed: use letters, digits and single underscores, "
                                 f"starting with a letter (it becomes a Kedro namespace; '{SEED_SEPARATOR}' is "
                                 "reserved)")
        clash = sorted(set(train) & set(inference))
        if clash:
            raise ValueError(f"{clash} named both in train_cells and inference_cells")
        for i, comp in enumerate(self.comparisons):
            unknown = [c for c in (comp.a, comp.b) if c not in train and c not in inference]
            if unknown:
                raise ValueError(f"comparisons[{i}] ({comp.finding}) names {unknown}, which is not a cell of the grid")
        for name, cell in inference.items():
            if cell.source not in train:
                raise ValueError(f"inference_cells.{name}.from must name a train cell ({sorted(train)}), "
                                 f"got {cell.source!r}")
        return self

    def train_overrides(self, name: str) -> dict[str, dict[str, Any]]:
        cell = self.train_cells[name]
        return cell.overrides() if cell else {}
