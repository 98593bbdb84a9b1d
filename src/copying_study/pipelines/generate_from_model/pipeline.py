"""``kedro run --pipelines=generate_from_model --params "generate.model=DIR,generate.prompts=file,..."``: see
``copying_study.pipelines.generate.pipeline`` (the nodes are the generate stage's)."""

from kedro.pipeline import Pipeline

from copying_study.pipelines.generate.pipeline import create_model_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """The generate stage sampling from ``generate.model`` (file or class prompts)."""
    return create_model_pipeline()
