"""evaluate_folder: the evaluate stage on a folder of images made elsewhere (``evaluate.generations_path``)."""

from copying_study.pipelines.evaluate_folder.pipeline import create_pipeline

__all__ = ["create_pipeline"]
