"""Project pipelines: every sub-package of ``copying_study.pipelines`` with a ``create_pipeline``."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The study's stages in the data's order; ``__default__`` runs them all.
STAGES = ("ingest", "dedup_clusters", "finetune", "generate", "evaluate", "complexity_analysis")


def register_pipelines() -> dict[str, Pipeline]:
    """Each stage's nodes in a namespace of the stage's name, datasets and parameters not renamed: kedro-viz draws
    the stages as collapsible groups in the data's order, and ``kedro run --namespaces=finetune`` selects one. Node
    names gain the prefix (``finetune.finetune_model``). The study keeps its own namespaces (one per cell)."""
    pipelines = find_pipelines(raise_errors=True)
    for name in STAGES:
        if name in pipelines:
            pipelines[name] = Pipeline(pipelines[name], namespace=name, prefix_datasets_with_namespace=False)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in STAGES if name in pipelines), Pipeline([])
    )
    return pipelines
