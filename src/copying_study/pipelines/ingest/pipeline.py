"""``ingest``: ``params:ingest`` + ``params:seed`` → ``ingested_set`` (in memory), ``ingest_rejects``,
``ingest_metrics``, ``control_set``; then the captioning node: ``ingested_set`` + ``params:caption`` →
``training_set`` (with ``blip_captions`` when ``caption.model`` is set) and ``caption_metrics``."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.ingest.nodes import caption_training_set, ingest_training_set
from copying_study.pipelines.tracking import log_metrics_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_training_set,
                inputs=["params:ingest", "params:seed"],
                outputs=["ingested_set", "ingest_rejects", "ingest_metrics", "control_set"],
                name="ingest_training_set",
            ),
            Node(
                caption_training_set,
                inputs=["ingested_set", "params:caption", "params:seed", "params:device"],
                outputs=["training_set", "caption_metrics"],
                name="caption_training_set",
            ),
            log_metrics_node("ingest_metrics"),
            log_metrics_node("caption_metrics"),
        ]
    )
