"""generate: seeded, batched sampling from the finetuned model with inference-time mitigations and a copy guard."""

from copying_study.pipelines.generate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
