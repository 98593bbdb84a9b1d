"""kedro-mlflow's ``MlflowArtifactDataset``, versioned as Kedro 1.x's catalog versions every other dataset.

kedro-mlflow 2.0 versions the wrapped dataset through its own ``versioned: true``: Kedro then gives the wrapped
dataset a save version of its own (a new timestamp), and Kedro 1.7's catalog refuses a dataset whose save version is
not the run's (``VersionAlreadyExistsError: ... All datasets in the catalog must have the same save version``).
With this class ``versioned: true`` goes on the entry itself, as for any Kedro dataset: the catalog hands the
entry the run's load and save versions, and they become the wrapped dataset's. Everything else is kedro-mlflow's:
the wrapped dataset saves its file, then the file is logged to the active MLflow run under ``artifact_path`` —
inside a tracked ``kedro run`` only (the project's hook switches logging on there; outside a run the dataset only
writes its file).

.. code-block:: yaml

    replication_histogram:
      type: copying_study.datasets.VersionedMlflowArtifactDataset
      versioned: true                    # the run's version, as any versioned Kedro dataset
      artifact_path: replication_histogram
      dataset:                           # any file dataset, without its own ``versioned``
        type: matplotlib.MatplotlibDataset
        filepath: data/08_reporting/replication_histogram.png
"""

from __future__ import annotations

from typing import Any

from kedro.io.core import DatasetError, Version
from kedro_mlflow.io.artifacts import MlflowArtifactDataset

__all__ = ["VersionedMlflowArtifactDataset"]


class VersionedMlflowArtifactDataset(MlflowArtifactDataset):
    """``MlflowArtifactDataset`` taking the catalog's ``version`` (module docstring)."""

    def __new__(cls, dataset: str | dict, run_id: str | None = None, artifact_path: str | None = None,
                credentials: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                version: Version | None = None):
        if isinstance(dataset, dict) and dataset.get("versioned"):
            raise DatasetError("VersionedMlflowArtifactDataset: put `versioned: true` on the entry, not on its "
                               "`dataset` (which would get a save version other than the run's)")
        instance = super().__new__(cls, dataset=dataset, run_id=run_id, artifact_path=artifact_path,
                                   credentials=credentials, metadata=metadata)
        if version is not None:
            if not hasattr(instance, "_version"):
                raise DatasetError(f"VersionedMlflowArtifactDataset: {type(instance).__name__} cannot be versioned")
            instance._version = version  # AbstractVersionedDataset reads it on every load and save
        # Logging is off until a tracked run switches it on (copying_study.hooks.ProjectMlflowHook): saved from a
        # notebook or a script, the dataset writes its file and starts no MLflow run (MLflow's fluent API would
        # start one implicitly, and leave it active)
        instance._logging_activated = False
        return instance
