"""The node that hands a stage's ``*_metrics`` output to MLflow: ``<name>`` (a versioned JSON dataset, what the
audit compares) -> ``<name>_mlflow`` (a kedro-mlflow ``MlflowMetricsHistoryDataset``: the run's metrics, each
history with its steps). The catalog entries are the ``{name}_metrics_mlflow`` patterns in ``conf/base/catalog.yml``.
"""

from kedro.pipeline import Node

from copying_study.metrics.tracking import metrics_history


def log_metrics_node(metrics: str) -> Node:
    """``metrics`` -> ``<metrics>_mlflow`` through :func:`copying_study.metrics.tracking.metrics_history`."""
    return Node(metrics_history, metrics, f"{metrics}_mlflow", name=f"log_{metrics}")
