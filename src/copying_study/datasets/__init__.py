"""Custom Kedro datasets for what kedro-datasets does not cover."""

from copying_study.datasets.descriptors_dataset import DescriptorsDataset
from copying_study.datasets.diffusers_dataset import DiffusersPipelineDataset
from copying_study.datasets.image_table import ImageTableDataset
from copying_study.datasets.mlflow_artifact import VersionedMlflowArtifactDataset

__all__ = ["DescriptorsDataset", "DiffusersPipelineDataset", "ImageTableDataset", "VersionedMlflowArtifactDataset"]
