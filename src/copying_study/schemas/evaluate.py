"""``evaluate:`` — how much the generations copy the training set, controls, baselines and quality
(docs/evaluate.md). New keys go here, with their default."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from copying_study.schemas._base import Params

TEXT_COLUMNS = ("prompt", "original_prompt")
Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
AtLeastOne = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class BootstrapParams(Params):
    n_boot: AtLeastOne = 1000
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95


class DescriptorOverrides(Params):
    path: str | None = None
    batch_size: AtLeastOne | None = None


class FolderParams(Params):
    caption_column: str = "text"


class ControlsParams(Params):
    n_positive: AtLeastOne = 64
    min_images: AtLeastOne = 20
    max_negative_copy_rate: Rate = 0.05
    min_positive_copy_rate: Rate = 0.95


class FidParams(Params):
    enabled: bool = True
    inception_path: str | None = None
    batch_size: AtLeastOne = 32
    max_reference: Annotated[int, Field(ge=2)] | None = None


class ClipScoreParams(Params):
    model_path: str | None = None
    batch_size: AtLeastOne = 32
    text_column: Literal[TEXT_COLUMNS] = "original_prompt"


class PlotParams(Params):
    gallery_n: AtLeastOne = 12
    gallery_columns: AtLeastOne = 3
    histogram_bins: AtLeastOne = 40


class EvaluateParams(Params):
    """The ``evaluate:`` block."""

    where: ClassVar[str] = "evaluate"

    generations_path: str | None = None
    k: AtLeastOne = 10
    copy_threshold: Similarity | None = None
    thresholds: Annotated[list[Similarity], Field(min_length=1)] = [0.5]
    bootstrap: BootstrapParams = BootstrapParams()
    descriptor: DescriptorOverrides = DescriptorOverrides()
    per_prompt_top: AtLeastOne = 3
    folder: FolderParams = FolderParams()
    controls: ControlsParams = ControlsParams()
    pdq_cross_check: bool = True
    fid: FidParams = FidParams()
    clipscore: ClipScoreParams = ClipScoreParams()
    plots: PlotParams = PlotParams()
