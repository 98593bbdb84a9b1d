"""``dedup_clusters``: copy descriptors of the training set, duplicate clusters, caption similarity, mitigation."""

from copying_study.pipelines.dedup_clusters.pipeline import create_pipeline

__all__ = ["create_pipeline"]
