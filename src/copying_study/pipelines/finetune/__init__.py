"""finetune: finetune_set -> finetuned_model (+ training_record, finetune_metrics, finetune_sample_grids)."""

from copying_study.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
