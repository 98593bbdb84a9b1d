"""``ingest``: ``params:ingest`` + ``params:seed`` → ``training_set``, ``ingest_rejects``, ``ingest_metrics``,
``control_set``."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.ingest.nodes import ingest_training_set


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_training_set,
                inputs=["params:ingest", "params:seed"],
                outputs=["training_set", "ingest_rejects", "ingest_metrics", "control_set"],
                name="ingest_training_set",
            )
        ]
    )
