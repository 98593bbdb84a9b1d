"""Nodes of the ``ingest`` pipeline (thin wrappers over ``copying_study.data.ingest`` and
``copying_study.data.captioning``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from copying_study.data.captioning import caption_table
from copying_study.data.ingest import ingest
from copying_study.data.table import ChunkedTable
from copying_study.schemas import CaptionParams


def ingest_training_set(
    params: dict[str, Any], seed: int
) -> tuple[ChunkedTable | pd.DataFrame, pd.DataFrame, dict, ChunkedTable | pd.DataFrame]:
    """Read ``params['source']`` into the training table, the rejects table, the ``ingest_metrics`` counts and the
    ``control_set`` (images of the same distribution that are never trained on: evaluate's negative control).

    The training table of a real source is a re-iterable :class:`ChunkedTable` (not a generator), so Kedro passes it
    whole to ``ImageTableDataset.save``, which writes it chunk by chunk.
    """
    result = ingest(params, seed)
    return result.table, result.rejects, result.metrics, result.control


def caption_training_set(ingested_set: Any, params: dict[str, Any], seed: int, device: str
                         ) -> tuple[Any, dict[str, Any]]:
    """``training_set``: the ingested table with ``blip_captions`` from ``caption.model`` (one deterministic + N
    sampled captions per image), or the ingested table unchanged when captioning is skipped; ``caption_metrics``
    records which, why, and the model (id, revision, weight sha256) and generation settings used."""
    return caption_table(ingested_set, CaptionParams.from_params(params), seed, device)
