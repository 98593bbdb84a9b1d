"""Copy-detection descriptors behind one interface.

>>> d = load_descriptor({"name": "default"})              # training-free, no weights
>>> d = load_descriptor({"name": "sscd", "path": "sscd_disc_mixup.torchscript.pt"})
>>> d = load_descriptor({"name": "pdq"})                  # Meta's PDQ hash as ±1/16 vectors (search: Hamming)
>>> X = d.encode(images)        # float32 [N, d.dim], L2-normalised rows; X @ Y.T = similarity
>>> d.meta()                    # name, dim, preprocessing, weights (path + sha256), config, device
>>> d2 = descriptor_from_meta(meta)   # the same descriptor again (e.g. for generations), checked against ``meta``

Names: ``default`` (training-free: layout thumbnails + gradient and hue histograms), ``sscd`` (TorchScript file), ``clip`` and
``dino`` (local Hugging Face folder or HF-cache id), ``pdq`` (Meta's perceptual hash, ``pdqhash``; its meta says
``metric: hamming`` so ``copying_study.search`` uses faiss's binary indexes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from copying_study.descriptors.base import Descriptor, EncodedImages, l2_normalize, sha256_file
from copying_study.descriptors.handcrafted import HandcraftedDescriptor
from copying_study.descriptors.hf import HFImageDescriptor
from copying_study.descriptors.pdq import PDQDescriptor
from copying_study.descriptors.scale import DEFAULT_WHITENING
from copying_study.descriptors.sscd import SSCDDescriptor

logger = logging.getLogger(__name__)

DESCRIPTOR_NAMES = ("default", "sscd", "clip", "dino", "pdq")
COMMON_KEYS = ("name", "path", "batch_size", "device", "half", "whitening", "workers")
EXTRA_KEYS = {
    "default": ("work_size", "blur", "layout_scales", "chroma_weight", "hog_cells", "orientations", "hue_cells",
                "hue_bins", "weights"),
    "sscd": ("resize_mode", "size"),
    "clip": (),
    "dino": (),
    "pdq": ("min_quality",),
}
#: overrides that ``descriptor_from_meta`` accepts: where the weights are now, and how to run
RUNTIME_KEYS = ("path", "batch_size", "device", "half", "workers")

__all__ = [
    "DESCRIPTOR_NAMES",
    "Descriptor",
    "EncodedImages",
    "check_same_descriptor",
    "descriptor_from_meta",
    "l2_normalize",
    "load_descriptor",
    "sha256_file",
]


def load_descriptor(spec: Mapping[str, Any] | str, device: str | None = None) -> Descriptor:
    """Build a descriptor from a spec like ``{"name": "sscd", "path": ..., "batch_size": 64, "device": "auto"}``.

    ``device`` (e.g. the shared ``params:device``) is used when the spec sets none. Keys with a ``None`` value are
    ignored. Unknown names or keys raise ``ValueError`` naming the allowed ones; a missing weights file raises
    ``FileNotFoundError`` naming the path.
    """
    raw = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    spec = {k: v for k, v in raw.items() if v is not None}
    name = spec.pop("name", "default")
    # the default descriptor is whitened unless the spec says ``whitening: null`` explicitly (docs/dedup.md)
    if name == "default" and "whitening" not in raw:
        spec["whitening"] = dict(DEFAULT_WHITENING)
    if name not in DESCRIPTOR_NAMES:
        raise ValueError(f"unknown descriptor.name '{name}': choose one of {', '.join(DESCRIPTOR_NAMES)}")
    allowed = COMMON_KEYS + EXTRA_KEYS[name]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"descriptor '{name}' does not take {unknown}: allowed keys are {', '.join(allowed)}")
    spec.setdefault("device", device or "auto")
    if name == "default":
        if spec.pop("path", None):
            logger.warning("descriptor 'default' needs no weights: descriptor.path is ignored")
        return HandcraftedDescriptor(**spec)
    if name == "sscd":
        return SSCDDescriptor(**spec)
    if name == "pdq":
        if spec.pop("path", None):
            logger.warning("descriptor 'pdq' needs no weights: descriptor.path is ignored")
        return PDQDescriptor(**spec)
    return HFImageDescriptor(family=name, **spec)


def check_same_descriptor(
    meta_a: Mapping[str, Any], meta_b: Mapping[str, Any], what_a: str = "queries", what_b: str = "index"
) -> None:
    """Raise ``ValueError`` if two descriptor metas differ in name, dim, preprocessing, config, weights sha256 or
    fitted whitening (sha256)."""
    problems = []
    for key in ("name", "dim", "preprocessing", "config"):
        if meta_a.get(key) != meta_b.get(key):
            problems.append(f"{key}: {meta_a.get(key)!r} vs {meta_b.get(key)!r}")
    white_a = (meta_a.get("whitening") or {}).get("sha256")
    white_b = (meta_b.get("whitening") or {}).get("sha256")
    if white_a != white_b:
        problems.append(f"whitening sha256: {white_a} vs {white_b}")
    sha_a = (meta_a.get("weights") or {}).get("sha256")
    sha_b = (meta_b.get("weights") or {}).get("sha256")
    if sha_a != sha_b:
        problems.append(f"weights sha256: {sha_a} vs {sha_b}")
    if problems:
        raise ValueError(f"descriptor mismatch between {what_a} and {what_b}: " + "; ".join(problems))


def descriptor_from_meta(
    meta: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, device: str | None = None
) -> Descriptor:
    """Rebuild the descriptor recorded in ``meta`` (e.g. ``train_descriptors["meta"]``) and check it is the same.

    ``overrides`` may set ``path`` (the weights moved), ``batch_size``, ``device``, ``half`` and ``workers``; a
    ``name`` in it must equal the recorded one. Any difference in name, dim, weights sha256 or preprocessing raises ``ValueError``.
    """
    if not meta or "name" not in meta or "dim" not in meta:
        raise ValueError("descriptor meta must hold at least 'name' and 'dim' (is it a train_descriptors meta?)")
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if "name" in overrides and overrides.pop("name") != meta["name"]:
        raise ValueError(
            f"descriptor name mismatch: the descriptors were made with '{meta['name']}', but the parameters ask for "
            f"a different descriptor"
        )
    unknown = sorted(set(overrides) - set(RUNTIME_KEYS) - set(EXTRA_KEYS.get(meta["name"], ())))
    if unknown:
        raise ValueError(f"descriptor_from_meta: cannot override {unknown}; allowed: {', '.join(RUNTIME_KEYS)}")
    spec: dict[str, Any] = {"name": meta["name"], "whitening": None, **(meta.get("config") or {})}
    spec.pop("model_class", None)
    weights = meta.get("weights") or {}
    if meta["name"] in ("clip", "dino"):
        spec["path"] = weights.get("folder")
    elif meta["name"] == "sscd":
        spec["path"] = weights.get("path")
    spec.update(overrides)
    descriptor = load_descriptor(spec, device=device)
    check_same_descriptor(descriptor.meta(), meta, "the rebuilt descriptor", "the recorded meta")
    return descriptor
