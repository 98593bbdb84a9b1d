"""Nodes of the generate stage: thin wrappers over ``copying_study.diffusion.sample`` and ``.guard``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from copying_study.data.captions import vocabulary
from copying_study.descriptors import descriptor_from_meta
from copying_study.diffusion.guard import (
    CopyIndex,
    GuardSettings,
    calibrate_wen_target,
    generate_guarded,
    guard_metrics,
)
from copying_study.diffusion.models import describe_pipeline, load_pipeline
from copying_study.diffusion.sample import (
    MitigationSettings,
    Sampler,
    class_prompts,
    expand_prompts,
    file_prompts,
    image_seeds,
    mitigate,
    read_prompts_file,
    resolve_dtype,
    training_prompts,
)
from copying_study.schemas import GenerateParams
from copying_study.utils.device import pick_device
from copying_study.utils.images import decode_image, encode_png

logger = logging.getLogger(__name__)

PLAN_COLUMNS = ("gen_id", "original_prompt", "prompt", "seed", "mitigation", "gn_lambda", "gn_uncond",
                "source_image_id")


def generate_settings(params: Any) -> dict[str, Any]:
    """The ``generate`` parameters checked by :class:`GenerateParams`, as a dict whose ``strengths`` and
    ``copy_guard`` are the library's :class:`MitigationSettings` and :class:`GuardSettings`."""
    p = GenerateParams.from_params(params).as_dict()
    s, g = p["strengths"], p["copy_guard"]
    calibrated = g["threshold"] == "calibrated"
    return {
        **p,
        "strengths": MitigationSettings(name=p["mitigation"], **s),
        # "calibrated": the descriptor's copy threshold from descriptor_calibration, filled in by generate_images
        "copy_guard": GuardSettings(enabled=g["enabled"], threshold=None if calibrated else g["threshold"],
                                    max_tries=g["max_tries"], mitigation=g["mitigation"], trigger=g["trigger"],
                                    detection_threshold=g["detection_threshold"]),
        "guard_threshold_source": "descriptor_calibration" if calibrated else "generate.copy_guard.threshold",
        "guard_descriptor": dict(g["descriptor"] or {}),
    }


def _vocab(record: Mapping[str, Any], prompts: list[str], needed: bool, fallbacks: list[str]) -> list[str]:
    """The word pool of rt/rc: the training record's vocabulary, else the prompts' words (a recorded fallback)."""
    vocab = list(record.get("vocabulary") or [])
    if vocab or not needed:
        return vocab
    msg = "the training record has no vocabulary: rt/rc draw words from the prompts themselves"
    logger.warning(msg)
    fallbacks.append(msg)
    return vocabulary(prompts)


def plan_generations(
    training_record: Mapping[str, Any] | None, p: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per image (``PLAN_COLUMNS``: its prompt before and after the mitigation, its seed, its source
    training image), the rt/rc vocabulary and the fallbacks taken. ``p`` is ``generate_settings``'s output."""
    n_prompts = math.ceil(p["n_images"] / p["images_per_prompt"])
    record = training_record or {}
    if p["prompts"] == "training":
        prompts = training_prompts(record.get("captions") or {}, n_prompts, seed)
    elif p["prompts"] == "file":
        prompts = file_prompts(read_prompts_file(p["prompts_file"], p["prompts_column"]), n_prompts, seed)
    else:
        prompts = class_prompts(p["class_names"] or record.get("class_labels") or [], n_prompts, seed)
    expanded = expand_prompts(prompts, p["n_images"], p["images_per_prompt"])
    fallbacks: list[str] = []
    settings: MitigationSettings = p["strengths"]
    guard: GuardSettings = p["copy_guard"]
    needs_vocab = settings.name in ("rt", "rc") or (guard.enabled and guard.mitigation in ("rt", "rc"))
    vocab = _vocab(record, [q.text for q in expanded], needs_vocab, fallbacks)
    rows = []
    for i, (prompt, image_seed) in enumerate(zip(expanded, image_seeds(seed, p["n_images"]), strict=True)):
        req = mitigate(prompt.text, image_seed, settings, vocab)
        rows.append({
            "gen_id": f"gen-{i:06d}", "original_prompt": prompt.text, "prompt": req.prompt, "seed": req.seed,
            "mitigation": settings.name, "gn_lambda": req.gn_lambda, "gn_uncond": req.gn_uncond,
            "source_image_id": prompt.source_image_id,
        })
    logger.debug("generate: %d images from %d '%s' prompts, mitigation %s", len(rows), n_prompts, p["prompts"],
                 settings.name)
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS)), vocab, fallbacks


def _model(finetuned_model: Any, p: dict[str, Any], device, dtype) -> tuple[Any, str]:
    """The pipeline to sample from: ``generate.model`` when set, else ``finetuned_model`` (a folder or a pipeline)."""
    if p["model"] and finetuned_model is not None:
        logger.warning("generate.model=%s replaces finetuned_model; training prompts still come from the "
                       "finetuning record", p["model"])
    source = p["model"] or finetuned_model
    if source is None:
        raise ValueError("no model to sample from: finetuned_model is missing and generate.model is not set")
    if isinstance(source, str):
        return load_pipeline(source, device=device, dtype=dtype), source
    return source, f"finetuned_model ({type(source).__name__})"


def generate_images(
    finetuned_model: Any,
    training_record: dict[str, Any],
    train_descriptors: dict[str, Any],
    descriptor_calibration: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, Any]]:
    """``generations`` (one row per image, PNG bytes), ``generate_metrics`` and ``generate_record``."""
    p = generate_settings(params)
    descriptor_guard = p["copy_guard"].enabled and p["copy_guard"].trigger == "descriptor"
    if descriptor_guard and p["guard_threshold_source"] == "descriptor_calibration":
        from copying_study.descriptors.calibration import check_calibration

        cal = check_calibration(descriptor_calibration, train_descriptors["meta"])
        p["copy_guard"] = replace(p["copy_guard"], threshold=float(cal["copy_threshold"]))
    plan, vocab, fallbacks = plan_generations(training_record, p, seed)
    dev = pick_device(device)
    pipe, model_source = _model(finetuned_model, p, dev, resolve_dtype(p["dtype"], dev))
    sampler = Sampler(
        pipe, device=dev, scheduler=p["scheduler"], steps=p["steps"], guidance=p["guidance"],
        resolution=p["resolution"], batch_size=p["batch_size"], eta=p["eta"], dtype=p["dtype"],
    )
    guard: GuardSettings = p["copy_guard"]
    index, descriptor_meta = None, None
    if guard.enabled and guard.trigger == "descriptor":
        descriptor = descriptor_from_meta(train_descriptors["meta"], p["guard_descriptor"], device=device)
        index = CopyIndex(descriptor, train_descriptors["embeddings"], train_descriptors["image_ids"],
                          meta=train_descriptors["meta"])
        descriptor_meta = descriptor.meta()
    # the plan's requests again (mitigate is seeded by the image's seed: the same prompts, plus the sampler-level
    # settings of wen / delayed / opposite that the plan table does not hold)
    requests = [mitigate(r.original_prompt, int(r.seed), p["strengths"], vocab) for r in plan.itertuples(index=False)]
    start = time.perf_counter()
    p["strengths"], requests, wen_target = calibrate_wen_target(sampler, plan["original_prompt"].tolist(), requests,
                                                                p["strengths"])
    gens = generate_guarded(
        sampler, plan["original_prompt"].tolist(), requests, p["strengths"].name,
        guard=guard, index=index, strengths=p["strengths"], vocab=vocab,
    )
    seconds = time.perf_counter() - start
    info = sampler.info()
    model_info = describe_pipeline(pipe)
    table = pd.DataFrame({
        "gen_id": plan["gen_id"].tolist(),
        "prompt": [g.request.prompt for g in gens],
        "original_prompt": plan["original_prompt"].tolist(),
        "seed": [int(g.request.seed) for g in gens],
        "first_seed": [int(g.first_seed) for g in gens],
        "mitigation": [g.mitigation for g in gens],
        "gn_lambda": [float(g.request.gn_lambda) for g in gens],
        "image": [encode_png(g.image) for g in gens],
        "source_image_id": plan["source_image_id"].tolist(),
        "guard_tries": [int(g.guard_tries) for g in gens],
        "guard_scores": [list(map(float, g.guard_scores)) for g in gens],
        "guard_score": [float(g.guard_score) for g in gens],
        "guard_match_id": [g.match_image_id for g in gens],
        "detect_first": [float(g.detect_first) for g in gens],
        "detect_mean": [float(g.detect_mean) for g in gens],
        "prompt_detect_score": [float(g.prompt_score) for g in gens],
        "early_guidance": [float("nan") if g.request.early_guidance is None else float(g.request.early_guidance)
                           for g in gens],
        "transition_t": [int(g.request.transition_t) if g.request.early_guidance is not None else -1 for g in gens],
        "wen_iterations": [int(g.wen_iterations) for g in gens],
        "wen_score_before": [float(g.wen_score_before) for g in gens],
        "scheduler": info["scheduler"],
        "steps": info["steps"],
        "guidance": info["guidance"],
        "resolution": info["resolution"],
        "model": model_source,
    })
    metrics = {
        "n_images": float(len(table)),
        "n_prompts": float(table["original_prompt"].nunique()),
        "prompt_changed_fraction": float((table["prompt"] != table["original_prompt"]).mean()),
        "seconds": float(seconds),
        "images_per_second": float(len(table) / seconds) if seconds > 0 else 0.0,
        "steps": float(info["steps"]),
        "guidance": float(info["guidance"]),
        **guard_metrics(gens, guard),
        **detection_metrics(table),
    }
    record = {
        "model": {"source": model_source, **model_info},
        "sampler": info,
        "prompts": {"source": p["prompts"], "file": p["prompts_file"], "n_images": p["n_images"],
                    "images_per_prompt": p["images_per_prompt"]},
        "mitigation": {**asdict(p["strengths"]), "wen_target_calibration": wen_target},
        "copy_guard": {**asdict(guard), "threshold_source": p["guard_threshold_source"],
                       "descriptor": descriptor_meta},
        "fallbacks": fallbacks,
    }
    logger.info("generate: %d images from %d '%s' prompts (mitigation %s) in %.1f s (%.2f images/s)", len(table),
                plan["original_prompt"].nunique(), p["prompts"], p["strengths"].name, seconds,
                metrics["images_per_second"])
    return table, metrics, record


def detection_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Means of the generations' detection scores for ``generate_metrics`` (absent when guidance is off)."""
    out = {}
    for col in ("detect_first", "detect_mean"):
        values = table[col].to_numpy(dtype=float)
        if np.isfinite(values).any():
            out[f"{col}_mean"] = float(np.nanmean(values))
    return out


def generate_images_from_model(
    train_descriptors: dict[str, Any], descriptor_calibration: dict[str, Any], params: dict[str, Any], seed: int,
    device: str
) -> tuple[pd.DataFrame, dict[str, float], dict[str, Any]]:
    """The ``generate_from_model`` pipeline: sample from the model named by ``generate.model`` (no finetuning run,
    so no training record: prompts must be ``file`` or ``class``)."""
    p = generate_settings(params)
    if not p["model"]:
        raise ValueError("generate_from_model needs generate.model: a local diffusers folder or a cached HF id")
    if p["prompts"] == "training":
        raise ValueError("generate.prompts 'training' needs a finetuning record: use the generate pipeline, or "
                         "prompts 'file' or 'class' with generate_from_model")
    return generate_images(None, None, train_descriptors, descriptor_calibration, params, seed, device)


def plot_generations_grid(generations: pd.DataFrame, params: dict[str, Any]) -> Figure:
    """A grid of the first ``grid_size`` generations with their (mitigated) prompts."""
    p = generate_settings(params)
    rows = generations.head(p["grid_size"])
    cols = max(1, min(8, math.ceil(math.sqrt(len(rows)))))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = Figure(figsize=(1.7 * cols, 1.9 * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows.itertuples(index=False), strict=False):
        ax.imshow(np.asarray(decode_image(row.image)), interpolation="nearest")
        title = row.prompt if len(row.prompt) <= 28 else row.prompt[:27] + "…"
        ax.set_title(f"{title}\n{row.mitigation}, tries {row.guard_tries}", fontsize=6)
    fig.suptitle(f"generations ({len(generations)} images; first {len(rows)})", fontsize=9)
    return fig
