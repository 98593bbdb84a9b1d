"""Calibrate a copy descriptor: its score distributions on copies and on distinct images, and its copy threshold.

For every reference family (:mod:`copying_study.descriptors.reference`: ``embedded`` scenes, ``photos`` from
installed packages, ``synthetic`` photo-like images) it scores

* **positive pairs**: each original against its copy under every copy transform (resize, JPEG, crop, brightness,
  contrast, overlaid text, combinations), and
* **negative pairs**: every pair of distinct originals (tiles of one photograph included: hard negatives),

and records their distributions, the **copy threshold** and, at that threshold, the false-positive rate (share of
negative pairs at or above it) and the recall (share of positive pairs at or above it) on each family.

The copy threshold:

* a descriptor with a published rule keeps it (``Descriptor.standard_copy_threshold``): SSCD's 0.5 (the paper's
  "copy"), PDQ's Hamming distance <= 31;
* any other descriptor gets :func:`threshold_rule`: the smallest multiple of ``step`` (0.05) at or above the
  ``1 - max_pair_fpr`` quantile of the negative scores of *every* family, ``max_pair_fpr`` = 0.001. The rule is
  stricter than the issue's "99 % of distinct pairs below": evaluation takes each generation's top-1 over the whole
  training set, and the maximum of N non-copy scores exceeds a per-pair 1 % quantile almost surely once N is in the
  hundreds.

The record says, per family, whether the targets hold: false-positive rate <= ``TARGET_MAX_FPR`` (1 %) and recall >=
``TARGET_MIN_RECALL`` (95 %). ``python -m copying_study.descriptors.calibration --help`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from copying_study.descriptors.base import Descriptor
from copying_study.descriptors.reference import (
    CALIBRATION_SEED,
    FAMILIES,
    TRANSFORMS,
    family_images,
    transform,
)
from copying_study.utils.seeding import numpy_rng

__all__ = ["FAMILIES", "TRANSFORMS", "calibrate", "threshold_rule", "format_table", "check_calibration",
           "transform", "CALIBRATION_VERSION"]

CALIBRATION_VERSION = 2
TARGET_MAX_FPR = 0.01
TARGET_MIN_RECALL = 0.95
MAX_PAIR_FPR = 1e-3
STEP = 0.05
PAPER_THRESHOLD = 0.5


def pair_scores(descriptor: Descriptor, images: Sequence, seed: int = CALIBRATION_SEED,
                transforms: Sequence[str] = TRANSFORMS, desc: str = "calibration") -> dict[str, np.ndarray]:
    """Positive scores per transform (each original vs its transformed copy) and ``negative`` scores (all pairs of
    distinct originals, i < j)."""
    base = descriptor.encode(images, desc=f"{desc}: originals")
    out: dict[str, np.ndarray] = {}
    for name in transforms:
        copies = [transform(img, name, numpy_rng(seed, "calibration", name, k)) for k, img in enumerate(images)]
        out[name] = np.einsum("nd,nd->n", base, descriptor.encode(copies, desc=f"{desc}: {name} copies"))
    sims = base @ base.T
    out["negative"] = sims[np.triu_indices(len(images), 1)]
    return out


def threshold_rule(negatives_by_family: Mapping[str, np.ndarray], max_pair_fpr: float = MAX_PAIR_FPR,
                   step: float = STEP) -> float:
    """The smallest multiple of ``step`` at or above the ``1 - max_pair_fpr`` quantile of every family's negatives
    (capped at 1.0)."""
    if not negatives_by_family:
        raise ValueError("threshold_rule needs the negative scores of at least one family")
    q = max(float(np.quantile(np.asarray(v, dtype=np.float64), 1.0 - max_pair_fpr))
            for v in negatives_by_family.values())
    t = math.ceil(round(q / step, 9)) * step
    return float(min(1.0, round(t, 6)))


def _quantiles(v: np.ndarray) -> dict[str, float]:
    return {"min": float(v.min()), "p1": float(np.percentile(v, 1)), "p5": float(np.percentile(v, 5)),
            "p50": float(np.median(v)), "p99": float(np.percentile(v, 99)), "p99_9": float(np.percentile(v, 99.9)),
            "max": float(v.max())}


def family_record(scores: Mapping[str, np.ndarray], threshold: float, n_images: int) -> dict[str, Any]:
    """One family's distributions and its false-positive rate / recall at ``threshold`` (and at the paper's 0.5)."""
    neg = np.asarray(scores["negative"], dtype=np.float64)
    positives = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items() if k != "negative"}
    pos = np.concatenate(list(positives.values()))
    fpr, recall = float((neg >= threshold).mean()), float((pos >= threshold).mean())
    return {
        "n_images": int(n_images),
        "n_negative_pairs": int(neg.size),
        "n_positive_pairs": int(pos.size),
        "negatives": _quantiles(neg),
        "positives": _quantiles(pos),
        "false_positive_rate": fpr,
        "recall": recall,
        "recall_by_transform": {k: float((v >= threshold).mean()) for k, v in positives.items()},
        "positive_p5_by_transform": {k: float(np.percentile(v, 5)) for k, v in positives.items()},
        "at_paper_threshold": {"false_positive_rate": float((neg >= PAPER_THRESHOLD).mean()),
                               "recall": float((pos >= PAPER_THRESHOLD).mean())},
        "meets_targets": bool(fpr <= TARGET_MAX_FPR and recall >= TARGET_MIN_RECALL),
    }


def calibrate(descriptor: Descriptor, families: Sequence[str] = FAMILIES, n: int = 200,
              seed: int = CALIBRATION_SEED) -> dict[str, Any]:
    """The calibration record of ``descriptor`` over ``families`` (``n`` originals each, at most)."""
    families = list(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"calibration families {unknown or families} are not valid: choose from {', '.join(FAMILIES)}")
    scores: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for family in families:
        images, _ = family_images(family, int(n), seed)
        scores[family] = pair_scores(descriptor, images, seed, desc=f"calibration {family}")
        sizes[family] = len(images)
    standard = getattr(descriptor, "standard_copy_threshold", None)
    if standard is not None:
        threshold, how = float(standard), f"the descriptor's published copy rule ({descriptor.name}: {standard:g})"
    else:
        threshold = threshold_rule({f: s["negative"] for f, s in scores.items()})
        how = (f"smallest multiple of {STEP:g} at or above the {1 - MAX_PAIR_FPR:.1%} quantile of the negative "
               f"scores of every family")
    per_family = {f: family_record(s, threshold, sizes[f]) for f, s in scores.items()}
    return {
        "version": CALIBRATION_VERSION,
        "descriptor": descriptor.meta(),
        "copy_threshold": threshold,
        "threshold_rule": how,
        "targets": {"max_false_positive_rate": TARGET_MAX_FPR, "min_recall": TARGET_MIN_RECALL,
                    "max_pair_fpr_rule": MAX_PAIR_FPR},
        "settings": {"families": families, "n_per_family": int(n), "seed": int(seed),
                     "transforms": list(TRANSFORMS)},
        "families": per_family,
        "meets_targets": bool(all(r["meets_targets"] for r in per_family.values())),
    }


def check_calibration(calibration: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """``calibration`` after checking it belongs to the descriptor ``meta`` describes (``ValueError`` otherwise)."""
    from copying_study.descriptors import check_same_descriptor

    if not isinstance(calibration, Mapping) or "copy_threshold" not in calibration:
        raise ValueError("descriptor_calibration has no copy_threshold: was it written by dedup_clusters?")
    check_same_descriptor(calibration.get("descriptor") or {}, meta, "descriptor_calibration", "train_descriptors")
    return dict(calibration)


def format_table(record: Mapping[str, Any]) -> str:
    """A plain-text table of a calibration record."""
    t = record["copy_threshold"]
    lines = [f"descriptor {record['descriptor']['name']} ({record['descriptor']['dim']}-d): copy threshold {t:g} "
             f"({record['threshold_rule']})",
             f"{'family':<10}{'images':>7}{'neg pairs':>10}{'neg p50':>8}{'neg p99':>8}{'p99.9':>7}{'max':>7}"
             f"{'FPR@t':>9}{'pos p5':>8}{'recall@t':>9}{'FPR@.5':>8}{'rec@.5':>8}  targets"]
    for family, r in record["families"].items():
        n, p = r["negatives"], r["positives"]
        lines.append(f"{family:<10}{r['n_images']:>7}{r['n_negative_pairs']:>10}{n['p50']:>8.3f}{n['p99']:>8.3f}"
                     f"{n['p99_9']:>7.3f}{n['max']:>7.3f}{r['false_positive_rate']:>9.5f}{p['p5']:>8.3f}"
                     f"{r['recall']:>9.4f}{r['at_paper_threshold']['false_positive_rate']:>8.4f}"
                     f"{r['at_paper_threshold']['recall']:>8.4f}  {'met' if r['meets_targets'] else 'NOT MET'}")
        lines.append(" " * 10 + "recall@t by transform: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["recall_by_transform"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: print the calibration table of a descriptor spec (JSON) over the chosen families."""
    from copying_study.descriptors import load_descriptor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--descriptor", default='{"name": "default"}', help="descriptor spec as JSON")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--n", type=int, default=200, help="originals per family")
    parser.add_argument("--seed", type=int, default=CALIBRATION_SEED)
    parser.add_argument("--json", help="also write the full record to this file")
    args = parser.parse_args(argv)
    record = calibrate(load_descriptor(json.loads(args.descriptor)), args.families.split(","), args.n, args.seed)
    print(format_table(record))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)


if __name__ == "__main__":
    main()
