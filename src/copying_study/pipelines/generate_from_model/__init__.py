"""generate_from_model: the generate stage on a model given as ``generate.model`` (no finetuning run needed)."""

from copying_study.pipelines.generate_from_model.pipeline import create_pipeline

__all__ = ["create_pipeline"]
