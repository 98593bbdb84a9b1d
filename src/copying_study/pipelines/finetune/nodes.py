"""Thin Kedro nodes over ``copying_study.diffusion.train``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from copying_study.diffusion.train import TrainResult, train
from copying_study.schemas import FinetuneParams
from copying_study.utils.device import pick_device
from copying_study.utils.seeding import seed_everything

logger = logging.getLogger(__name__)


def training_record(result: TrainResult, table: pd.DataFrame, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The JSON record of a finetuning run (see docs/finetune.md for every key)."""
    plan = result.plan
    dup = plan.duplicated
    counts = result.samples_per_image
    labels = table["class_label"].dropna().astype(str).unique().tolist() if "class_label" in table.columns else []
    return {
        "settings": params,
        "seed": int(seed),
        "base_model": params["base_model"],
        "base": result.base,
        "caption_type": params["caption_type"],
        "duplication": params["duplication"],
        "ddf": params["ddf"] if params["duplication"] != "none" else 1.0,
        "mitigation": params["mitigation"],
        "train_text_encoder": params["train_text_encoder"],
        "captions": plan.caption_of(),
        "vocabulary": plan.vocabulary,
        "class_labels": sorted(labels),
        "duplicated_ids": plan.duplicated_ids,
        "n_images": len(plan.image_ids),
        "samples_drawn": {
            "duplicated_per_image": float(counts[dup].mean()) if dup.any() else None,
            "other_per_image": float(counts[~dup].mean()) if (~dup).any() else None,
            "total": int(counts.sum()),
        },
        "steps": int(params["steps"]),
        "steps_run": int(result.steps_run),
        "resumed_from_step": result.resumed_from,
        "resumed_from_checkpoint": result.resumed_checkpoint,
        "seconds": round(result.seconds, 3),
        "samples_per_s": round(result.samples_per_s, 3),
        "device": result.device,
        "precision": result.precision,
        "checksums": {"base": result.base_checksum, "finetuned": result.final_checksum},
        "run_fingerprint": result.fingerprint,
        "components": result.components,
        "fallbacks": plan.notes,
        "final_loss": result.loss_history[-1][1] if result.loss_history else None,
        "wen": None if result.wen_left_out is None else {
            "threshold": params["wen_threshold"], "samples_left_out": result.wen_left_out,
            "share_left_out": result.wen_left_out / max(1, int(counts.sum()))},
    }


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
    metrics = {
        "train_loss": result.loss_history,
        "learning_rate": result.lr_history,
        # training throughput as stepped metrics beside the loss (timings: the audit skips them)
        "steps_per_s": [[step, sps] for step, sps, _ in result.throughput_history],
        "images_per_s": [[step, ips] for step, _, ips in result.throughput_history],
        "samples_per_s": result.samples_per_s,
        "train_seconds": result.seconds,
    }
    return result.pipe.to("cpu"), record, metrics, result.sample_grids


def plot_sample_grids(grids: dict[int, np.ndarray]) -> dict[str, Any]:
    """One figure per sampled step: each row is a training image and two generations from its training caption."""
    figures = {}
    for step, grid in sorted(grids.items()):
        h, w = grid.shape[:2]
        fig = Figure(figsize=(max(3.5, w / 16), max(3.0, h / 16)), dpi=100)
        ax = fig.subplots()
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(f"step {step}: training image | two samples", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        figures[f"step_{int(step):07d}.png"] = fig
    return figures
