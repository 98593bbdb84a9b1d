"""Nodes of the ``caption`` pipeline (thin wrappers over ``copying_study.data.captioning``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from copying_study.data.captioning import caption_table, settings_from_params


def caption_training_set(training_set: pd.DataFrame, params: dict[str, Any], seed: int, device: str
                         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``captioned_set``: ``training_set`` with ``blip_captions`` from ``params['model']`` (one deterministic + N
    sampled captions per image), or ``training_set`` unchanged when skipped; ``caption_metrics`` records which,
    why, and the model (id, revision, weight sha256) and generation settings used."""
    return caption_table(training_set, settings_from_params(params), seed, device)
