"""One typed parameter schema per stage (pydantic v2 models), the only place parameters are checked.

=========== ============================================ ======================
block       schema                                       used by
=========== ============================================ ======================
ingest      :class:`~.ingest.IngestParams`               ``data.ingest``
caption     :class:`~.caption.CaptionParams`             ``data.captioning``
dedup       :class:`~.dedup.DedupParams`                 dedup_clusters nodes
finetune    :class:`~.finetune.FinetuneParams`           ``diffusion.train``
generate    :class:`~.generate.GenerateParams`           generate nodes
evaluate    :class:`~.evaluate.EvaluateParams`           ``metrics.evaluation``
complexity  :class:`~.complexity.ComplexityParams`       complexity nodes
study       :class:`~.study.StudyParams`                 ``copying_study.study``
(all)       :class:`~.project.ProjectParams`             the run checks (every key of every stage)
=========== ============================================ ======================

``XParams.from_params(block)`` validates a block (defaults filled in) or raises :class:`ParameterError` naming each
bad key, its value and the expected type; ``.as_dict()`` gives the plain nested dict. A new parameter is one line
in its stage's schema (with its default) plus its line in ``conf/base/parameters_<stage>.yml``.
"""

from copying_study.schemas._base import ParameterError, Params
from copying_study.schemas.caption import CaptionParams
from copying_study.schemas.complexity import ComplexityParams
from copying_study.schemas.dedup import DedupParams
from copying_study.schemas.evaluate import EvaluateParams
from copying_study.schemas.finetune import FinetuneParams
from copying_study.schemas.generate import GenerateParams
from copying_study.schemas.ingest import IngestParams
from copying_study.schemas.project import ProjectParams
from copying_study.schemas.study import StudyParams

STAGE_SCHEMAS: dict[str, type[Params]] = {
    "ingest": IngestParams, "caption": CaptionParams, "dedup": DedupParams, "finetune": FinetuneParams, "generate": GenerateParams,
    "evaluate": EvaluateParams, "complexity": ComplexityParams,
}
"""The schema of each stage's parameter block, by block name."""

__all__ = [
    "STAGE_SCHEMAS", "CaptionParams", "ComplexityParams", "DedupParams", "EvaluateParams", "FinetuneParams", "GenerateParams",
    "IngestParams", "ParameterError", "Params", "ProjectParams", "StudyParams",
]
