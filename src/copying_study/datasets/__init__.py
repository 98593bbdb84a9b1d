"""Custom Kedro datasets for what kedro-datasets does not cover."""

from copying_study.datasets.descriptors_dataset import DescriptorsDataset
from copying_study.datasets.diffusers_dataset import DiffusersPipelineDataset

__all__ = ["DescriptorsDataset", "DiffusersPipelineDataset"]
