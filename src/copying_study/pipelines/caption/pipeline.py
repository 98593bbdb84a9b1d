"""``caption``: ``training_set`` + ``params:caption`` → ``captioned_set``, ``caption_metrics``.

It sits between ``ingest`` and ``dedup_clusters`` (which reads ``captioned_set``). With ``caption.model: null``
(the embedded default) the table passes through unchanged and ``caption_metrics`` says it was skipped."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.caption.nodes import caption_training_set


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                caption_training_set,
                inputs=["training_set", "params:caption", "params:seed", "params:device"],
                outputs=["captioned_set", "caption_metrics"],
                name="caption_training_set",
            )
        ]
    )
