"""The ``caption`` pipeline: ``training_set`` → ``captioned_set`` (with ``blip_captions`` when a model is set)."""

from copying_study.pipelines.caption.pipeline import create_pipeline

__all__ = ["create_pipeline"]
