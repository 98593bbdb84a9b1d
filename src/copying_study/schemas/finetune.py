"""``finetune:`` — the finetuning run (docs/finetune.md). Defaults are those of ``conf/base`` (the tiny study)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from copying_study.data.captions import CAPTION_TYPES, TRAIN_MITIGATIONS
from copying_study.schemas._base import Params

DUPLICATION_MODES = ("none", "full", "partial")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")

NonNegative = Annotated[float, Field(ge=0.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
AtLeastOne = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


class FinetuneParams(Params):
    """The ``finetune:`` block, validated and typed; the training code reads its attributes.

    Nothing is loaded: the paper configuration validates on a machine without its weights."""

    model_config = ConfigDict(frozen=True)
    where: ClassVar[str] = "finetune"
    NON_SEMANTIC: ClassVar[tuple[str, ...]] = (
        "log_every", "sample_every", "sample_prompts", "sample_steps", "sample_guidance", "checkpoint_every",
        "checkpoint_dir", "keep_checkpoints", "resume", "resume_from", "embedded_base_dir")
    """Settings that do not change what is trained (a checkpoint is resumed only by a run with the same others)."""

    base_model: str = "tiny"
    resolution: AtLeastOne = 16
    caption_type: Literal[CAPTION_TYPES] = "original"
    duplication: Literal[DUPLICATION_MODES] = "full"
    dup_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    ddf: Annotated[float, Field(ge=1.0)] = 20.0
    mitigation: Literal[TRAIN_MITIGATIONS] = "none"
    mitigation_prob: Probability = 0.1
    mitigation_insertions: Count = 2
    rc_words: AtLeastOne = 4
    rna_high: Count = 10**6
    gn_lambda: NonNegative = 0.1
    wen_threshold: NonNegative | None = None
    wen_quantile: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    wen_calibration_steps: AtLeastOne = 20
    random_caption_words: AtLeastOne = 6
    uncond_prob: Probability = 0.1
    train_text_encoder: bool = True
    steps: AtLeastOne = 600
    batch_size: AtLeastOne = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    lr_schedule: Literal[LR_SCHEDULES] = "constant_with_warmup"
    lr_warmup_steps: Count = 50
    weight_decay: NonNegative = 1e-2
    adam_beta1: Probability = 0.9
    adam_beta2: Probability = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: NonNegative = 1.0
    random_flip: bool = True
    mixed_precision: Literal[MIXED_PRECISION] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    log_every: AtLeastOne = 10
    sample_every: Count = 300
    sample_prompts: Count = 6
    sample_steps: AtLeastOne = 25
    sample_guidance: float = 3.0
    checkpoint_every: Count = 300
    checkpoint_dir: str = "data/06_models/finetune_checkpoints"
    keep_checkpoints: AtLeastOne = 1
    resume: bool = True
    resume_from: str | None = None
    tiny: dict[str, Any] = {}
    embedded_base: dict[str, Any] = {}
    embedded_base_dir: str = "data/06_models/embedded_base"

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give 'tiny', 'embedded', a local diffusers folder or a Hugging Face id")
        return value

    @model_validator(mode="after")
    def _partial_needs_alternatives(self) -> FinetuneParams:
        if self.duplication == "partial" and self.caption_type not in ("original", "blip"):
            raise ValueError(
                "duplication 'partial' draws a duplicated image's caption from its alternatives, so it needs "
                f"caption_type original or blip (got {self.caption_type!r})")
        return self

    @model_validator(mode="after")
    def _wen_needs_a_threshold(self) -> FinetuneParams:
        if self.mitigation != "wen":
            return self
        if (self.wen_threshold is None) == (self.wen_quantile is None):
            raise ValueError(
                "mitigation 'wen' leaves samples whose detection score exceeds a threshold out of the loss: set "
                "exactly one of finetune.wen_threshold (a score on the model's own scale: look at generations' "
                "detect_first first) or finetune.wen_quantile (the threshold is that quantile of the scores of the "
                "first wen_calibration_steps steps, in which every sample is kept; docs/finetune.md)")
        if self.wen_quantile is not None and self.wen_calibration_steps >= self.steps:
            raise ValueError(f"finetune.wen_calibration_steps={self.wen_calibration_steps} leaves no step of the "
                             f"{self.steps} to mitigate: use fewer calibration steps")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.as_dict()
