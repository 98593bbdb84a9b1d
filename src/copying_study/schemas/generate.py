"""``generate:`` — sampling from the finetuned model, inference-time mitigations and the copy guard
(docs/generate.md). Every key is required (``conf/base`` gives them all)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from copying_study.data.captions import INFERENCE_MITIGATIONS
from copying_study.schemas._base import Params, similarity_or_calibrated
from copying_study.schemas.dedup import check_descriptor_spec

AtLeastOne = Annotated[int, Field(ge=1)]


class StrengthParams(Params):
    p: Annotated[float, Field(ge=0.0, le=1.0)]
    n: AtLeastOne
    rc_words: AtLeastOne
    rna_high: Annotated[int, Field(ge=0)]
    gn_lambda: Annotated[float, Field(ge=0.0)]
    gn_uncond: bool
    wen_lr: Annotated[float, Field(gt=0.0)]
    wen_max_iters: Annotated[int, Field(ge=0)]
    wen_target_loss: Annotated[float, Field(ge=0.0)]
    wen_target_quantile: Annotated[float, Field(gt=0.0, lt=1.0)] | None
    delayed_transition: Annotated[int, Field(ge=0, le=1000)]
    opposite_scale: Annotated[float, Field(le=0.0)]
    opposite_transition: Annotated[int, Field(ge=0, le=1000)]


class CopyGuardParams(Params):
    enabled: bool
    threshold: Any
    max_tries: AtLeastOne
    mitigation: Literal[INFERENCE_MITIGATIONS]
    descriptor: dict[str, Any] | None
    trigger: Literal["descriptor", "detection"]
    detection_threshold: Annotated[float, Field(ge=0.0)] | None

    _threshold = field_validator("threshold")(similarity_or_calibrated)

    @field_validator("descriptor")
    @classmethod
    def _descriptor(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_descriptor_spec(value, runtime=True)

    @model_validator(mode="after")
    def _detection(self) -> CopyGuardParams:
        if self.enabled and self.trigger == "detection" and self.detection_threshold is None:
            raise ValueError("copy_guard.trigger is 'detection' but copy_guard.detection_threshold is not set")
        return self


class GenerateParams(Params):
    """The ``generate:`` block."""

    where: ClassVar[str] = "generate"

    model: str | None
    prompts: str
    prompts_file: str | None
    prompts_column: str
    class_names: list[str]
    n_images: AtLeastOne
    images_per_prompt: AtLeastOne
    scheduler: str
    steps: Annotated[int, Field(ge=1, le=1000)]
    guidance: Annotated[float, Field(ge=0.0)]
    eta: Annotated[float, Field(ge=0.0, le=1.0)]
    resolution: Annotated[int, Field(ge=8)] | None
    batch_size: AtLeastOne
    dtype: str
    mitigation: Literal[INFERENCE_MITIGATIONS]
    strengths: StrengthParams
    copy_guard: CopyGuardParams
    grid_size: Annotated[int, Field(ge=1, le=400)]

    @field_validator("prompts", "scheduler", "dtype")
    @classmethod
    def _choice(cls, value: str, info) -> str:
        from copying_study.diffusion.sample import DTYPES, PROMPT_SOURCES, SCHEDULERS

        allowed = {"prompts": PROMPT_SOURCES, "scheduler": tuple(SCHEDULERS), "dtype": ("auto", *DTYPES)}[info.field_name]
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    @model_validator(mode="after")
    def _prompts_file(self) -> GenerateParams:
        if self.prompts == "file" and not self.prompts_file:
            raise ValueError("prompts is 'file' but prompts_file is not set")
        return self
