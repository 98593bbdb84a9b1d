"""evaluate: replication of training images by generations (copy descriptors + faiss), baselines, FID, CLIPScore,
splits and figures. ``evaluate_folder`` runs the same nodes on a folder of images made elsewhere."""

from copying_study.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
