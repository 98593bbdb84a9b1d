"""``dedup_clusters``: ``training_set`` → ``train_descriptors``,
``duplicate_clusters``, ``cluster_summary``, ``finetune_set``, ``descriptor_calibration``, two plots and
``dedup_metrics``. Parameters: ``params:dedup``, ``params:seed``, ``params:device``."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.dedup_clusters import nodes
from copying_study.pipelines.tracking import log_metrics_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.compute_train_descriptors, ["training_set", "params:dedup", "params:device"],
                 "train_descriptors", name="dedup_descriptors"),
            Node(nodes.calibrate_descriptor, ["params:dedup", "params:device"], "descriptor_calibration",
                 name="dedup_calibrate_descriptor"),
            Node(nodes.find_duplicate_clusters, ["train_descriptors", "training_set", "params:dedup"],
                 "duplicate_clusters", name="dedup_find_clusters"),
            Node(nodes.summarise_clusters,
                 ["duplicate_clusters", "training_set", "params:dedup", "params:seed", "params:device"],
                 "cluster_summary", name="dedup_cluster_summary"),
            Node(nodes.apply_mitigation, ["training_set", "duplicate_clusters", "params:dedup", "params:seed"],
                 "finetune_set", name="dedup_mitigation"),
            Node(nodes.plot_cluster_gallery,
                 ["duplicate_clusters", "cluster_summary", "training_set", "params:dedup"],
                 "dedup_cluster_gallery", name="dedup_plot_gallery"),
            Node(nodes.plot_cluster_sizes, ["duplicate_clusters", "params:dedup"], "dedup_cluster_sizes",
                 name="dedup_plot_sizes"),
            Node(nodes.dedup_metrics,
                 ["duplicate_clusters", "cluster_summary", "training_set", "finetune_set", "train_descriptors",
                  "params:dedup"],
                 "dedup_metrics", name="dedup_metrics"),
            log_metrics_node("dedup_metrics"),
        ]
    )
