"""The ``ingest`` pipeline: a source (embedded, imagefolder, classfolders, parquet, webdataset) → ``training_set``."""

from copying_study.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
