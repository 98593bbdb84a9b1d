"""Ingest a source into the ``training_set`` table: validate, convert, resize, and count what was rejected.

``ingest(params, seed)`` is the whole stage without Kedro (the ``ingest`` pipeline's node calls it). For the real
sources it streams: the reader yields one undecoded item at a time, each image is decoded, converted to RGB
(``utils.images.to_rgb``: palette/alpha over white, 16-bit scaled, CMYK via PIL), resized on its short edge and
center-cropped to ``resolution``, re-encoded as PNG and appended to a temporary parquet file in chunks; the result is
a :class:`~copying_study.data.table.ChunkedTable` that ``ImageTableDataset`` copies chunk by chunk into the catalog.
Peak memory is one chunk of PNGs plus one decoded image, whatever the source size.

Rejected items (see ``readers.REJECT_REASONS``) go to the rejects table with their reason; with
``on_error: fail`` the first one raises :class:`IngestError` instead. A source that yields no image at all is an
error naming the source, whatever ``on_error`` says.

The **control set** (evaluate's negative control: images of the training distribution that are never trained on)
is made here, so ``training_set`` never contains it: the embedded generator draws ``embedded.n_control`` held-out
scenes; a real source sends each item to ``control_set`` with probability ``control.fraction``, decided by a hash of
``(seed, item key)`` (seeded, independent of the order items arrive in); or, with ``control.path``, the control set
is read from that folder (same layout as ``ingest.path``) and nothing is held out.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from PIL import Image

from copying_study.data.embedded import generate_control, generate_embedded
from copying_study.data.readers import REJECT_REASONS, Reject, open_reader
from copying_study.data.table import (
    ChunkedTable,
    ChunkedTableWriter,
    make_image_id,
    rejects_frame,
    sha256_hex,
    training_schema,
)
from copying_study.preflight import missing_inputs
from copying_study.schemas.ingest import ON_ERROR, IngestParams
from copying_study.utils.images import encode_png, resize_center_crop, to_rgb
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed

logger = logging.getLogger(__name__)

LOGGED_REJECTS = 10  # individual WARNING lines before only the summary is logged

class IngestError(ValueError):
    """A bad item under ``on_error: fail``, or a source that gave no images."""


class ItemRejected(Exception):
    """Raised by :func:`prepare_image` for an image that cannot be used."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class PreparedImage:
    png: bytes
    width: int
    height: int
    mode: str


@dataclass
class IngestResult:
    """The outputs of the stage: training table, rejects table, counts (``ingest_metrics``) and the control set."""

    table: ChunkedTable | pd.DataFrame
    rejects: pd.DataFrame
    metrics: dict[str, Any]
    control: ChunkedTable | pd.DataFrame | None = None


def prepare_image(data: bytes, resolution: int) -> PreparedImage:
    """Decode ``data``, convert to RGB, resize (short edge) + center-crop to ``resolution``, encode as PNG.

    Raises :class:`ItemRejected` with reason ``truncated_image``, ``unreadable_image`` or ``unsupported_mode``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            img.load()
            mode, (width, height) = img.mode, img.size
            try:
                rgb = to_rgb(img)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for odd modes
                raise ItemRejected("unsupported_mode", f"mode {mode} cannot be converted to RGB: {exc}") from exc
    except ItemRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        text = f"{type(exc).__name__}: {exc}"
        reason = "truncated_image" if "truncat" in text.lower() else "unreadable_image"
        raise ItemRejected(reason, text) from exc
    if width < 1 or height < 1:
        raise ItemRejected("unreadable_image", f"image has no pixels ({width}x{height})")
    return PreparedImage(encode_png(resize_center_crop(rgb, resolution)), width, height, mode)


def ingest(params: Mapping[str, Any] | None, seed: int) -> IngestResult:
    """Run the ingest stage on ``params`` (the ``ingest:`` block, checked by :class:`IngestParams`; the paths it
    names must exist) with the root ``seed``."""
    p = IngestParams.from_params(params).as_dict()
    problems = missing_inputs("ingest", p)
    if problems:
        raise ValueError("; ".join(problems))
    if p["source"] == "embedded" and p["path"] not in (None, ""):
        logger.warning("ingest.path '%s' is ignored: ingest.source is embedded (generated data)", p["path"])
    if p["source"] == "embedded":
        return ingest_embedded(p, seed)
    control_path = p["control"]["path"] or None
    result = ingest_source(p["source"], p["path"], p["resolution"], p["on_error"], p[p["source"]], p["chunk_rows"],
                           control_fraction=0.0 if control_path else float(p["control"]["fraction"]), seed=seed)
    if control_path:
        control = ingest_source(p["source"], str(control_path), p["resolution"], p["on_error"], p[p["source"]],
                                p["chunk_rows"])
        result.control = control.table
        result.metrics["control"] = {"source": "ingest.control.path", "path": str(control_path),
                                     "n_images": len(control.table), "n_rejected": control.metrics["n_rejected"]}
    return result


def is_control(key: str, seed: int, fraction: float) -> bool:
    """Whether the item with ``key`` goes to the control set: a seeded hash of the key below ``fraction``."""
    return fraction > 0 and derive_seed(seed, "ingest", "control", key) / float(1 << 63) < fraction


def ingest_embedded(p: Mapping[str, Any], seed: int) -> IngestResult:
    """Generate the embedded study set (``p`` = validated ``ingest`` params)."""
    start = time.perf_counter()
    options = {k: v for k, v in p["embedded"].items() if k != "n_control"}
    frame = generate_embedded(resolution=p["resolution"], seed=seed, **options)
    control = generate_control(p["embedded"]["n_control"], p["resolution"], seed, options["n_captions"],
                               options["complexity_weights"])
    planted = frame["planted_cluster"]
    metrics = _base_metrics("embedded", None, p["resolution"], p["on_error"], len(frame), Counter(),
                            time.perf_counter() - start)
    metrics.update({
        "seed": int(seed),
        "n_planted_clusters": int(planted[planted >= 0].nunique()),
        "n_planted_images": int((planted >= 0).sum()),
        "n_duplicate_bytes": int(frame["sha256"].duplicated().sum()),
        "n_classes": int(frame["class_label"].nunique()),
        "n_captions_per_image": float(frame["captions"].map(len).mean()),
        "components": {"generator": "copying_study.data.embedded.generate_embedded"},
        "control": {"source": "generated held-out scenes (ingest.embedded.n_control)", "n_images": len(control)},
    })
    return IngestResult(frame, rejects_frame(), metrics, control)


def ingest_source(source: str, path: str, resolution: int, on_error: str = "skip",
                  options: Mapping[str, Any] | None = None, chunk_rows: int = 256, control_fraction: float = 0.0,
                  seed: int = 0) -> IngestResult:
    """Stream a real source into a chunked training table (and, with ``control_fraction`` > 0, a control table of
    the items :func:`is_control` picks); see the module docstring."""
    if on_error not in ON_ERROR:
        raise ValueError(f"ingest.on_error '{on_error}' is unknown: allowed {', '.join(ON_ERROR)}")
    reader = open_reader(source, path, options)  # checks the source before any work
    start = time.perf_counter()
    table, table_path = ChunkedTable.temporary(batch_rows=chunk_rows)
    control, control_path = ChunkedTable.temporary(prefix="copying_study_control_", batch_rows=chunk_rows)
    rejects: list[dict[str, str]] = []
    reasons: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    shas: set[str] = set()
    labels: set[str] = set()
    n_duplicates = n_uncaptioned = 0

    def reject(item: Reject) -> None:
        if on_error == "fail":
            raise IngestError(f"ingest.source={source} at '{path}': {item.reason} for '{item.file_name}': "
                              f"{item.detail} (ingest.on_error=fail; use skip to record it in ingest_rejects)")
        reasons[item.reason] += 1
        rejects.append({"source": source, "file_name": item.file_name, "reason": item.reason, "detail": item.detail})
        if len(rejects) <= LOGGED_REJECTS:
            logger.warning("ingest %s: skipped '%s': %s (%s)", source, item.file_name, item.reason, item.detail)

    with ChunkedTableWriter(table_path, training_schema(False), chunk_rows) as writer, \
            ChunkedTableWriter(control_path, training_schema(False), chunk_rows) as control_writer:
        for item in progress(reader, desc=f"ingest {source}", total=reader.total, unit="img"):
            if isinstance(item, Reject):
                reject(item)
                continue
            try:
                prepared = prepare_image(item.data, resolution)
            except ItemRejected as exc:
                reject(Reject(item.file_name or item.key, exc.reason, exc.detail))
                continue
            sha = sha256_hex(item.data)
            n_duplicates += sha in shas
            shas.add(sha)
            if prepared.mode != "RGB":
                modes[prepared.mode] += 1
            if item.class_label is not None:
                labels.add(item.class_label)
            n_uncaptioned += not item.captions
            (control_writer if is_control(item.key, seed, control_fraction) else writer).append({
                "image_id": make_image_id(source, item.key, sha),
                "image": prepared.png,
                "caption": item.captions[0] if item.captions else "",
                "captions": list(item.captions),
                "class_label": item.class_label,
                "source": source,
                "file_name": item.file_name,
                "sha256": sha,
                "width": prepared.width,
                "height": prepared.height,
            })
    n_rows = writer.n_rows
    if n_rows == 0 and control_writer.n_rows:
        raise IngestError(f"ingest.source={source} at '{path}': every image went to the control set "
                          f"(ingest.control.fraction={control_fraction:g}); nothing is left to train on")
    if n_rows == 0:
        raise IngestError(f"ingest.source={source} at '{path}' gave no images: all {len(rejects)} item(s) were "
                          f"rejected ({dict(reasons)}); see the WARNING lines above")
    if len(rejects) > LOGGED_REJECTS:
        logger.warning("ingest %s: %d items skipped in all (%s); see ingest_rejects", source, len(rejects),
                       dict(reasons))
    if modes:
        logger.info("ingest %s: converted to RGB from modes %s", source, dict(modes))
    metrics = _base_metrics(source, path, resolution, on_error, n_rows, reasons, time.perf_counter() - start)
    metrics.update({
        "n_converted": int(sum(modes.values())),
        "converted_modes": {m: int(c) for m, c in sorted(modes.items())},
        "n_duplicate_bytes": int(n_duplicates),
        "n_without_caption": int(n_uncaptioned),
        "n_classes": len(labels),
        "notes": dict(reader.notes),
        "components": {"reader": type(reader).__name__, "options": dict(options or {})},
        "control": {"source": f"seeded hash of each item's key below ingest.control.fraction={control_fraction:g}",
                    "n_images": int(control_writer.n_rows)},
    })
    return IngestResult(table, rejects_frame(rejects), metrics, control)


def _base_metrics(source: str, path: str | None, resolution: int, on_error: str, n_rows: int,
                  reasons: Counter[str], seconds: float) -> dict[str, Any]:
    n_rejected = int(sum(reasons.values()))
    return {
        "source": source,
        "path": path,
        "resolution": int(resolution),
        "on_error": on_error,
        "n_images": int(n_rows),
        "n_rejected": n_rejected,
        "n_items": int(n_rows) + n_rejected,
        "rejected": {r: int(reasons.get(r, 0)) for r in REJECT_REASONS},
        "seconds": round(float(seconds), 3),
        "images_per_second": round(n_rows / seconds, 2) if seconds > 0 else None,
    }
