"""Image complexity measures (paper §6): histogram entropy, JPEG compressibility and total variation.

Every measure is taken on one image after ``resize_center_crop`` to a common size (``prepare``), so that images of
different sizes are comparable. Definitions (also written into the stage's outputs by ``measure_settings``):

- **grey levels**: Pillow's ``convert("L")``, i.e. ITU-R 601-2 luma ``L = (299 R + 587 G + 114 B) / 1000`` rounded to
  8 bits. (The paper's code uses scikit-image's ``rgb2gray``, Rec. 709 weights; the two differ by a few grey levels.)
- **histogram entropy**: Shannon entropy of the 256-bin grey-level histogram, ``-sum p_i ln p_i`` in **nats**
  (natural log, as ``sklearn.metrics.cluster.entropy`` in the paper's code). 0 for a flat image, ``ln 2`` for an
  image that is half one level and half another, at most ``ln 256 ≈ 5.545``.
- **JPEG size**: bytes of the RGB image encoded by Pillow at ``quality`` (90 in the paper), 4:2:0 chroma subsampling,
  no Huffman optimisation, baseline (non-progressive). Smaller = more compressible = simpler.
- **total variation**: the mean absolute difference between horizontally and vertically adjacent grey levels scaled
  to [0, 1]: ``(sum |g[i, j+1] - g[i, j]| + sum |g[i+1, j] - g[i, j]|) / (H (W-1) + (H-1) W)`` with ``g = L / 255``.
  0 for a flat image, 1 for a one-pixel black/white checkerboard. (The paper's "TV loss" is an unnormalised L1 sum
  times 1e-4; this mean is independent of the image size.)

The study functions measure each generation's top-1 matched training image (``score_matches``, as the paper does)
and correlate each measure with the top-1 similarity (``correlate_with_similarity``, via ``metrics.correlation``).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
import PIL
from PIL import Image

from copying_study.metrics.correlation import correlate
from copying_study.utils.images import decode_image, resize_center_crop, to_rgb
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed

MEASURES: tuple[str, ...] = ("entropy", "jpeg_bytes", "total_variation")
"""The column names of the three complexity measures, in the order they are reported."""

MEASURE_BOUNDS: dict[str, tuple[float, float]] = {
    "entropy": (0.0, math.log(256)),
    "jpeg_bytes": (0.0, math.inf),
    "total_variation": (0.0, 1.0),
}
"""The range each measure can take (used to keep smoothed densities inside it)."""

ENTROPY_UNIT = "nats"
JPEG_SUBSAMPLING = "4:2:0"
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
GREY_CONVERSION = "Pillow convert('L'): ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000, 8 bits"
TOTAL_VARIATION_DEFINITION = (
    "mean |difference| of horizontally and vertically adjacent grey levels scaled to [0, 1] "
    "(sum of both directions / (H(W-1) + (H-1)W))"
)


def prepare(image: Image.Image | bytes, size: int, resample: str = "bicubic") -> Image.Image:
    """An RGB ``size``×``size`` image: decode (bytes), short edge resized to ``size``, center crop.

    Raises ``ValueError`` for an unreadable image, a size below 2 or an unknown ``resample`` filter.
    """
    if int(size) < 2:
        raise ValueError(f"image size must be >= 2 pixels, got {size}")
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample filter '{resample}': use one of {sorted(RESAMPLE_FILTERS)}")
    img = decode_image(bytes(image)) if isinstance(image, (bytes, bytearray, memoryview)) else to_rgb(image)
    return resize_center_crop(img, int(size), resample=RESAMPLE_FILTERS[resample])


def grey_levels(image: Image.Image) -> np.ndarray:
    """The 8-bit grey levels of ``image`` as a uint8 array [H, W] (ITU-R 601-2 luma, see module docstring)."""
    return np.asarray(image.convert("L"), dtype=np.uint8)


def histogram_entropy(grey: np.ndarray) -> float:
    """Shannon entropy in nats of the 256-bin histogram of 8-bit grey levels ``grey`` (any shape, uint8)."""
    grey = np.asarray(grey)
    if grey.size == 0:
        raise ValueError("histogram entropy of an empty image is undefined")
    if grey.dtype != np.uint8:
        raise ValueError(f"histogram entropy expects uint8 grey levels, got dtype {grey.dtype}")
    counts = np.bincount(grey.ravel(), minlength=256)
    p = counts[counts > 0] / grey.size
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 (a flat image) into 0.0


def jpeg_bytes(image: Image.Image, quality: int = 90) -> int:
    """Size in bytes of ``image`` (converted to RGB) encoded as JPEG by Pillow at ``quality`` (1-100)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    to_rgb(image).save(
        buf, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING, optimize=False, progressive=False
    )
    return buf.tell()


def total_variation(grey: np.ndarray) -> float:
    """Mean absolute difference of adjacent grey levels (both axes) on the [0, 1] scale; see the module docstring.

    ``grey`` is a 2-D array: uint8 levels (divided by 255) or floats already in [0, 1]. Needs at least 2 pixels.
    """
    g = np.asarray(grey)
    if g.ndim != 2:
        raise ValueError(f"total variation expects a 2-D grey image, got shape {g.shape}")
    g = g.astype(np.float64) / 255.0 if g.dtype == np.uint8 else g.astype(np.float64)
    h, w = g.shape
    pairs = h * (w - 1) + (h - 1) * w
    if pairs == 0:
        raise ValueError(f"total variation needs at least two adjacent pixels, got shape {g.shape}")
    diffs = np.abs(np.diff(g, axis=1)).sum() + np.abs(np.diff(g, axis=0)).sum()
    return float(diffs / pairs)


def complexity_measures(image: Image.Image, jpeg_quality: int = 90) -> dict[str, float | int]:
    """The three measures of an already prepared image: ``{"entropy", "jpeg_bytes", "total_variation"}``."""
    grey = grey_levels(image)
    return {
        "entropy": histogram_entropy(grey),
        "jpeg_bytes": jpeg_bytes(image, jpeg_quality),
        "total_variation": total_variation(grey),
    }


def measure_settings(size: int, resample: str, jpeg_quality: int) -> dict[str, Any]:
    """A record of exactly how the measures were computed, for the stage's outputs."""
    return {
        "image_size": int(size),
        "resize": f"short edge to {int(size)} px ({resample}), center crop {int(size)}x{int(size)}",
        "grey_levels": GREY_CONVERSION,
        "entropy": f"Shannon entropy of the 256-bin grey-level histogram, natural log ({ENTROPY_UNIT})",
        "entropy_unit": ENTROPY_UNIT,
        "entropy_max": math.log(256),
        "jpeg": {
            "encoder": f"Pillow {PIL.__version__}",
            "quality": int(jpeg_quality),
            "colour": "RGB",
            "subsampling": JPEG_SUBSAMPLING,
            "optimize": False,
            "unit": "bytes",
        },
        "total_variation": TOTAL_VARIATION_DEFINITION,
    }


# -- the study: measures of each generation's top-1 training match, and their correlation with similarity --------

SIMILARITY = "top1_similarity"
SCORE_COLUMNS: tuple[str, ...] = ("gen_id", "match_image_id", SIMILARITY, *MEASURES)
"""The columns of the ``complexity_scores`` table, in order."""


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...], table_name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{table_name} lacks column(s) {missing}; it has {list(table.columns)}")


def _rows_where(table: pd.DataFrame, mask: pd.Series, what: str, table_name: str) -> None:
    """Raise ``ValueError`` naming (by ``gen_id``) the rows of ``table`` where ``mask`` holds."""
    if mask.any():
        ids = table.loc[mask, "gen_id"].astype(str).tolist()
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise ValueError(f"{table_name}: {len(ids)} row(s) have {what} (gen_id: {shown})")


def require_valid_similarity(table: pd.DataFrame, table_name: str = "replication_scores") -> np.ndarray:
    """``table.top1_similarity`` as float64; ``ValueError`` naming the ``gen_id`` of every NaN/inf similarity."""
    _require_columns(table, ("gen_id", SIMILARITY), table_name)
    sim = pd.to_numeric(table[SIMILARITY], errors="coerce").astype(np.float64)
    _rows_where(table, ~np.isfinite(sim), f"a missing or non-finite {SIMILARITY}", table_name)
    return sim.to_numpy()


def score_matches(
    replication_scores: pd.DataFrame,
    training_set: pd.DataFrame,
    *,
    size: int,
    resample: str = "bicubic",
    jpeg_quality: int = 90,
) -> pd.DataFrame:
    """The complexity of each generation's top-1 matched training image: one row per generation, ``SCORE_COLUMNS``.

    Each distinct matched image is decoded, prepared (``prepare``) and measured once. Raises ``ValueError`` naming
    the rows for a NaN similarity or a missing match id, and naming the ids for matches absent from
    ``training_set`` or duplicated ``image_id`` values there.
    """
    _require_columns(replication_scores, ("gen_id", SIMILARITY, "match_image_id"), "replication_scores")
    _require_columns(training_set, ("image_id", "image"), "training_set")
    similarity = require_valid_similarity(replication_scores)
    _rows_where(replication_scores, replication_scores["match_image_id"].isna(), "no match_image_id",
                "replication_scores")
    match_ids = replication_scores["match_image_id"].astype(str)
    wanted = training_set[training_set["image_id"].astype(str).isin(set(match_ids))]
    ids = wanted["image_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"training_set has duplicated image_id value(s) {sorted(set(ids[ids.duplicated()]))[:10]}")
    absent = sorted(set(match_ids) - set(ids))
    if absent:
        raise ValueError(
            f"{len(absent)} match_image_id value(s) of replication_scores are not in training_set "
            f"(e.g. {absent[:10]}): were both made from the same training set version?"
        )
    measured: dict[str, dict[str, float | int]] = {}
    pairs = zip(ids, wanted["image"], strict=True)
    for image_id, data in progress(pairs, desc="complexity", total=len(ids), unit="img"):
        try:
            image = prepare(data, size, resample)
        except ValueError as exc:
            raise ValueError(f"training image '{image_id}': {exc}") from exc
        measured[image_id] = complexity_measures(image, jpeg_quality)
    table = pd.DataFrame({
        "gen_id": replication_scores["gen_id"].astype(str).to_numpy(),
        "match_image_id": match_ids.to_numpy(),
        SIMILARITY: similarity,
        "entropy": np.array([measured[m]["entropy"] for m in match_ids], dtype=np.float64),
        "jpeg_bytes": np.array([measured[m]["jpeg_bytes"] for m in match_ids], dtype=np.int64),
        "total_variation": np.array([measured[m]["total_variation"] for m in match_ids], dtype=np.float64),
    })
    return table[list(SCORE_COLUMNS)]


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def correlate_with_similarity(
    scores: pd.DataFrame, *, threshold: float, n_boot: int, confidence: float, seed: int
) -> dict[str, Any]:
    """Correlation of each measure with ``top1_similarity`` plus counts above/below ``threshold``.

    Returns ``{<measure>: correlate(...) + {"median_above", "median_below"}, "n", "n_unique_matches", "threshold",
    "above_rule", "n_above_threshold", "n_below_threshold", "entropy_unit", "messages"}``. Each measure's bootstrap
    uses its own seed derived from ``seed``. A measure whose correlation is undefined gets ``status:
    "not_computable"`` and its reason is also listed in ``messages``. Raises ``ValueError`` for NaN similarity.
    """
    _require_columns(scores, SCORE_COLUMNS, "complexity_scores")
    similarity = require_valid_similarity(scores, "complexity_scores")
    above = similarity > threshold
    report: dict[str, Any] = {
        "n": int(len(scores)),
        "n_unique_matches": int(scores["match_image_id"].nunique()),
        "threshold": float(threshold),
        "above_rule": f"{SIMILARITY} > threshold",
        "n_above_threshold": int(above.sum()),
        "n_below_threshold": int((~above).sum()),
        "entropy_unit": ENTROPY_UNIT,
        "messages": [],
    }
    for measure in MEASURES:
        values = scores[measure].to_numpy(dtype=np.float64)
        result = correlate(
            values, similarity, x_name=measure, y_name=SIMILARITY, n_boot=n_boot, confidence=confidence,
            seed=derive_seed(seed, "complexity", "bootstrap", measure),
        )
        result["median_above"] = _median(values[above])
        result["median_below"] = _median(values[~above])
        if result["status"] != "ok":
            report["messages"].append(f"{measure}: correlation not computable: {result['reason']}")
        elif result["bootstrap"]["ci_reason"]:
            report["messages"].append(f"{measure}: no bootstrap interval: {result['bootstrap']['ci_reason']}")
        report[measure] = result
    return report


def flat_metrics(report: dict[str, Any], prefix: str = "complexity") -> dict[str, float]:
    """The numbers of a ``correlate_with_similarity`` report as ``{"<prefix>.<measure>.<stat>": float}``.

    Intervals become ``..._ci_low`` / ``..._ci_high``; statistics that were not computable are left out.
    """
    out: dict[str, float] = {
        f"{prefix}.{key}": float(report[key])
        for key in ("n", "n_unique_matches", "n_above_threshold", "n_below_threshold")
    }
    for measure in MEASURES:
        result = report[measure]
        for stat in ("pearson_r", "pearson_p", "spearman_r", "spearman_p", "median_above", "median_below"):
            if result[stat] is not None:
                out[f"{prefix}.{measure}.{stat}"] = float(result[stat])
        for kind in ("pearson", "spearman"):
            if result[f"{kind}_ci"] is not None:
                low, high = result[f"{kind}_ci"]
                out[f"{prefix}.{measure}.{kind}_ci_low"] = float(low)
                out[f"{prefix}.{measure}.{kind}_ci_high"] = float(high)
    return out
