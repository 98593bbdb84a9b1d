"""The whole parameter tree: the shared keys (``parameters.yml``) and one block per stage. An unknown top-level key
(a typo in a file or in ``--params``) is an error."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from copying_study.schemas._base import Params
from copying_study.schemas.caption import CaptionParams
from copying_study.schemas.complexity import ComplexityParams
from copying_study.schemas.dedup import DedupParams
from copying_study.schemas.evaluate import EvaluateParams
from copying_study.schemas.finetune import FinetuneParams
from copying_study.schemas.generate import GenerateParams
from copying_study.schemas.ingest import IngestParams

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class AuditParams(Params):
    gpu_tolerance: Annotated[float, Field(ge=0.0)] = 1e-3


class ProjectParams(Params):
    """Every parameter of the project. A stage block that is absent is not checked (a run that needs it stops on
    the missing ``params:<stage>`` input)."""

    where: ClassVar[str] = ""

    seed: int
    device: str = "auto"
    audit: AuditParams = AuditParams()
    ingest: IngestParams | None = None
    caption: CaptionParams | None = None
    dedup: DedupParams | None = None
    finetune: FinetuneParams | None = None
    generate: GenerateParams | None = None
    evaluate: EvaluateParams | None = None
    complexity: ComplexityParams | None = None
    study: dict[str, Any] | None = None
    """Checked by :class:`~copying_study.schemas.StudyParams` for runs of the study pipeline only (a bad grid must
    not stop the other pipelines)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE.match(value.lower()):
            raise ValueError("expected auto, cpu, mps or cuda[:N]")
        return value
