"""Nodes of the ``ingest`` pipeline (thin wrappers over ``copying_study.data.ingest``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from copying_study.data.ingest import ingest, validate_params
from copying_study.data.table import ChunkedTable


def ingest_training_set(
    params: dict[str, Any], seed: int
) -> tuple[ChunkedTable | pd.DataFrame, pd.DataFrame, dict, ChunkedTable | pd.DataFrame]:
    """Read ``params['source']`` into the training table, the rejects table, the ``ingest_metrics`` counts and the
    ``control_set`` (images of the same distribution that are never trained on: evaluate's negative control).

    The training table of a real source is a re-iterable :class:`ChunkedTable` (not a generator), so Kedro passes it
    whole to ``ImageTableDataset.save``, which writes it chunk by chunk.
    """
    checked = validate_params(params)
    result = ingest(checked, seed)
    return result.table, result.rejects, result.metrics, result.control
