"""``caption:`` — model captions (``blip_captions``) for data without captions or for MC (docs/caption.md)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from copying_study.schemas._base import Params

DECODINGS = ("beam", "greedy")


class CaptionParams(Params):
    """The ``caption:`` block, validated; the captioning code reads its attributes. Nothing is loaded, so a
    configuration validates on a machine without the model."""

    model_config = ConfigDict(frozen=True)
    where: ClassVar[str] = "caption"

    model: str | None = None
    revision: str | None = None
    prompt: str | None = None
    n_sampled: Annotated[int, Field(ge=0)] = 4
    decoding: Literal[DECODINGS] = "beam"
    num_beams: Annotated[int, Field(ge=1)] = 3
    max_new_tokens: Annotated[int, Field(ge=1)] = 30
    min_new_tokens: Annotated[int, Field(ge=0)] = 1
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    top_k: Annotated[int, Field(ge=0)] = 0
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    sample_repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    batch_size: Annotated[int, Field(ge=1)] = 8
    half: bool | None = None

    @field_validator("model", "revision", "prompt")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a non-empty string or null")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _tokens(self) -> CaptionParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                             f"({self.max_new_tokens})")
        return self

    @property
    def per_image(self) -> int:
        """Captions per image: the deterministic one + the sampled ones."""
        return 1 + self.n_sampled

    def generation(self) -> dict[str, Any]:
        """The settings that decide the captions (recorded with them)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("model", "revision", "batch_size", "half")}
