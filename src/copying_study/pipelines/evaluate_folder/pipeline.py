"""``kedro run --pipelines=evaluate_folder --params evaluate.generations_path=DIR``: see
``copying_study.pipelines.evaluate.pipeline`` (the nodes are the evaluate stage's)."""

from kedro.pipeline import Pipeline

from copying_study.pipelines.evaluate.pipeline import create_folder_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """The evaluate stage reading its generations from ``evaluate.generations_path`` only."""
    return create_folder_pipeline()
