"""complexity_analysis: how simple are the training images that generations copy? (paper §6, Figure 7)"""

from copying_study.pipelines.complexity_analysis.pipeline import create_pipeline

__all__ = ["create_pipeline"]
