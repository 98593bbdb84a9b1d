"""What a stage reads from disk besides the catalog, and which of it is missing.

The parameters name input folders and files (``ingest.path``, ``ingest.classfolders.captions_file``, a prompts
file, a folder of generations) and model weights (the SSCD TorchScript file, CLIP/DINO folders, the base diffusion
model, the FID Inception file). :func:`missing_inputs` lists, for one stage's validated parameters, every one of
them that is not there, so that a run can stop before its first node naming each one (instead of dying in the
middle with a traceback). A model named by a Hugging Face id counts as present only when it is in the local cache:
nothing is downloaded at run time (docs/real-weights.md).

Framework-free: the run checks (``copying_study.run_checks``) call it for every stage a run will execute.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HF_HINT = "nothing is downloaded at run time: see docs/real-weights.md"


def _exists(path: Any) -> bool:
    return Path(str(path)).expanduser().exists()


def _looks_like_hf_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def hf_cached(model_id: str, revision: str | None = None) -> bool:
    """Whether a Hugging Face model id (at ``revision``, default the cached ``main``) is in the local cache
    (``HF_HOME`` / ``HF_HUB_CACHE``); never downloads."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, OSError, ValueError: not usable offline
        return False
    return True


def model_problem(key: str, ref: str, what: str, marker: str | None = None, revision: str | None = None
                  ) -> str | None:
    """``None`` when ``ref`` is an existing folder (holding ``marker`` when given) or a cached Hugging Face id, else
    the line naming what is missing."""
    path = Path(ref).expanduser()
    if path.exists():
        if marker and not (path / marker).exists():
            return f"{key}: '{ref}' is not a {what} folder (no {marker})"
        return None
    if _looks_like_hf_id(ref):
        if hf_cached(ref, revision):
            return None
        return (f"{key}: '{ref}' is not a local folder and not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); {HF_HINT}")
    return f"{key}: {what} '{ref}' does not exist (docs/real-weights.md)"


def _file(key: str, value: Any, what: str) -> str | None:
    return None if _exists(value) else f"{key}: {what} '{value}' does not exist"


def ingest_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    out: list[str] = []
    source = p["source"]
    if p["control"]["path"] not in (None, ""):
        out.append(_file(f"{where}.control.path", p["control"]["path"], "control folder"))
    if source == "embedded":
        return [x for x in out if x]
    path = p["path"]
    if path is None or str(path).strip() == "":
        return [f"{where}.path is required for {where}.source '{source}'", *filter(None, out)]
    out.append(_file(f"{where}.path", path, f"{source} source"))
    captions_file = p["classfolders"]["captions_file"] if source == "classfolders" else None
    if captions_file and not (_exists(captions_file) or _exists(Path(str(path)) / captions_file)):
        out.append(f"{where}.classfolders.captions_file: '{captions_file}' does not exist (looked at it and under "
                   f"{where}.path)")
    if source == "parquet" and p["parquet"]["image_root"]:
        out.append(_file(f"{where}.parquet.image_root", p["parquet"]["image_root"], "image folder"))
    return [x for x in out if x]


def caption_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    if not p["model"]:
        return []  # no model: the stage is skipped, and says so in caption_metrics
    problem = model_problem(f"{where}.model", p["model"], "image-to-text model", "config.json", p["revision"])
    return [problem] if problem else []


def descriptor_inputs(spec: Mapping[str, Any] | None, key: str, recorded: bool = False) -> list[str]:
    """The weights a descriptor block names (``recorded``: runtime overrides of a recorded descriptor, where only
    a given ``path`` is checked)."""
    spec = dict(spec or {})
    path = spec.get("path")
    if recorded:
        return [p for p in [path and _file(f"{key}.path", path, "descriptor weights")] if p]
    name = spec.get("name", "default")
    if name == "sscd":
        if not path:
            return [f"{key}.path: the sscd descriptor needs its TorchScript file (docs/real-weights.md)"]
        return [p for p in [_file(f"{key}.path", path, "SSCD TorchScript file")] if p]
    if name in ("clip", "dino"):
        if not path:
            return [f"{key}.path: the {name} descriptor needs a local model folder or a cached Hugging Face id"]
        return [p for p in [model_problem(f"{key}.path", str(path), f"{name} model")] if p]
    return []


def dedup_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    out = descriptor_inputs(p["descriptor"], f"{where}.descriptor")
    if p["caption_model"]:
        out.append(model_problem(f"{where}.caption_model", str(p["caption_model"]), "CLIP text model"))
    return [x for x in out if x]


def finetune_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    out = []
    if p["base_model"] not in ("tiny", "embedded"):  # both are built here (embedded: once, then cached)
        out.append(model_problem(f"{where}.base_model", p["base_model"], "diffusers pipeline", "model_index.json"))
    if p["resume_from"]:
        out.append(_file(f"{where}.resume_from", p["resume_from"], "checkpoint"))
    return [x for x in out if x]


def generate_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    out = []
    if p["model"]:
        out.append(model_problem(f"{where}.model", p["model"], "diffusers pipeline", "model_index.json"))
    if p["prompts"] == "file" and p["prompts_file"]:
        out.append(_file(f"{where}.prompts_file", p["prompts_file"], "prompts file"))
    if p["copy_guard"]["enabled"]:
        out += descriptor_inputs(p["copy_guard"]["descriptor"], f"{where}.copy_guard.descriptor", recorded=True)
    return [x for x in out if x]


def evaluate_inputs(p: Mapping[str, Any], where: str) -> list[str]:
    out = []
    if p["generations_path"]:
        out.append(_file(f"{where}.generations_path", p["generations_path"], "folder of generations"))
    if p["fid"]["enabled"] and p["fid"]["inception_path"]:
        out.append(_file(f"{where}.fid.inception_path", p["fid"]["inception_path"], "FID Inception file"))
    if p["clipscore"]["model_path"]:
        out.append(model_problem(f"{where}.clipscore.model_path", str(p["clipscore"]["model_path"]), "CLIP model"))
    out += descriptor_inputs(p["descriptor"], f"{where}.descriptor", recorded=True)
    return [x for x in out if x]


STAGE_INPUTS: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "ingest": ingest_inputs, "caption": caption_inputs, "dedup": dedup_inputs, "finetune": finetune_inputs, "generate": generate_inputs,
    "evaluate": evaluate_inputs,
}
"""Per parameter block, the function listing what its parameters name that is missing."""


def missing_inputs(stage: str, params: Mapping[str, Any], where: str | None = None) -> list[str]:
    """One line per input path or model weight that ``params`` (the stage's validated block, as a dict) names and
    that is not there; ``where`` prefixes the keys (default: the block's name)."""
    check = STAGE_INPUTS.get(stage)
    return check(params, where or stage) if check else []
