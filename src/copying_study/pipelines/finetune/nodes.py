"""Thin Kedro nodes over ``copying_study.diffusion.train``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from copying_study.diffusion.train import train, training_metrics, training_record
from copying_study.metrics.plots import sample_grid_figures
from copying_study.schemas import FinetuneParams
from copying_study.utils.device import pick_device
from copying_study.utils.seeding import seed_everything

logger = logging.getLogger(__name__)


def finetune_model(
    finetune_set: pd.DataFrame, params: dict[str, Any], seed: int, device: str, run_id: str
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[int, np.ndarray]]:
    """Finetune ``finetune.base_model`` on ``finetune_set``. ``run_id`` (the Kedro run id) names this run's
    checkpoint folder: only this run resumes from it unless ``finetune.resume_from`` names a checkpoint.

    Returns ``finetuned_model`` (a diffusers pipeline), ``training_record``, ``finetune_metrics`` (loss and learning
    rate histories as ``[[step, value], ...]``, samples/s) and the sample grids by step.
    """
    settings = FinetuneParams.from_params(params)
    dev = pick_device(device)
    seed_everything(int(seed))
    result = train(finetune_set, settings, int(seed), dev, run_id=str(run_id))
    record = training_record(result, finetune_set, settings.to_dict(), int(seed))
    return result.pipe.to("cpu"), record, training_metrics(result), result.sample_grids


def plot_sample_grids(grids: dict[int, np.ndarray]) -> dict[str, Any]:
    """One figure per sampled step (``copying_study.metrics.plots.sample_grid_figures``)."""
    return sample_grid_figures(grids)
