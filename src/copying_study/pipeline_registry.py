"""Project pipelines: every sub-package of ``copying_study.pipelines`` with a ``create_pipeline``."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The study's stages in the data's order; ``__default__`` runs them all.
STAGES = ("ingest", "dedup_clusters", "finetune", "generate", "evaluate", "complexity_analysis")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in STAGES if name in pipelines), Pipeline([])
    )
    return pipelines
