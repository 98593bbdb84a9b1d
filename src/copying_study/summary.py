"""The short summary printed at the end of a ``kedro run`` that evaluated generations: every line says what it
measures, on which scale, and whether the run's controls show that the scale separates copies from non-copies."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: what each figure of a default run shows (by dataset file name)
FIGURES = {
    "replication_histogram": "top-1 similarity of generations vs the distinct-image background and the controls",
    "replication_gallery": "the strongest matches: each generation beside its top-1 training image",
    "generations_grid": "a grid of generated images with their prompts",
    "dedup_cluster_gallery": "the largest duplicate clusters found in the training set",
    "dedup_cluster_sizes": "how many training images each duplicate cluster holds",
    "complexity_density": "complexity of matched training images, copies vs non-copies",
    "complexity_scatter": "complexity of each matched training image against its similarity",
}


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(float(x), fmt)


def _ci(ci: Sequence[Any] | None) -> str:
    lo, hi = (ci or [None, None])[:2]
    return f"[95% CI {_num(lo)}, {_num(hi)}]"


def short_path(path: str, root: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``root`` (default: the working directory) when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path(root or os.getcwd()).resolve()))
    except ValueError:
        return str(path)


def _copy_scale_lines(rep: Mapping[str, Any]) -> list[str]:
    scale = rep.get("copy_scale") or {}
    desc = rep.get("descriptor") or {}
    t = rep.get("copy_threshold")
    how = "calibrated" if scale.get("source") == "descriptor_calibration" else "set by evaluate.copy_threshold"
    white = ", whitened" if scale.get("whitened") else ""
    lines = [f"descriptor: {desc.get('name', '?')} ({desc.get('dim', '?')}-d{white}); copy threshold "
             f"{_num(t, '.2f')} ({how})"]
    cal = scale.get("calibration") or {}
    if cal:
        parts = [f"{f} FPR {_num(r.get('false_positive_rate'), '.4f')} recall {_num(r.get('recall'))}"
                 for f, r in cal.items()]
        verdict = "targets met" if scale.get("calibration_meets_targets") else "TARGETS NOT MET"
        lines.append(f"  calibration at the calibrated threshold (distinct pairs / copy pairs): {'; '.join(parts)}"
                     f" — {verdict}")
    else:
        lines.append("  calibration: none for this descriptor — copy rates are on an uncalibrated scale")
    return lines


def format_summary(replication: Mapping[str, Any] | None, complexity: Mapping[str, Any] | None,
                   plots: Sequence[str]) -> str:
    """Descriptor and copy threshold with its calibration, copy rate, dataset similarity, backgrounds, controls,
    the duplicated/not split, quality, the complexity correlations and what each figure shows."""
    lines = ["", "=== copying_study: summary " + "=" * 40]
    if replication:
        rep = replication
        lines += _copy_scale_lines(rep)
        t = rep.get("copy_threshold")
        n = rep.get("n_generations")
        lines.append(f"copy rate (generations with top-1 >= {_num(t, '.2f')}): {_num(rep.get('copy_rate'))} "
                     f"{_ci(rep.get('copy_rate_ci'))}, {rep.get('n_copies')} of {n}")
        lines.append(f"dataset similarity (95th pct of top-1, the paper's number): "
                     f"{_num(rep.get('dataset_similarity'))} {_ci(rep.get('dataset_similarity_ci'))}; "
                     f"paper's fraction > 0.5: {_num(rep.get('fraction_above_0_5'))}")
        bg, bgd = rep.get("background") or {}, rep.get("background_distinct") or {}
        lines.append(f"background, training vs nearest distinct training image (known duplicates excluded): "
                     f"95th pct {_num(bgd.get('dataset_similarity'))}, median {_num(bgd.get('median'))}; "
                     f"raw (duplicates included) 95th pct {_num(bg.get('dataset_similarity'))}")
        controls = rep.get("controls") or {}
        if controls:
            neg, pos = controls.get("negative") or {}, controls.get("positive") or {}
            lines.append(f"controls {controls.get('status')}: negative ({neg.get('n')} images never trained on) "
                         f"copy rate {_num(neg.get('copy_rate'))} (needs {neg.get('criterion', '?')[10:]}); "
                         f"positive ({pos.get('n')} copy-transformed training images) copy rate "
                         f"{_num(pos.get('copy_rate'))} (needs {pos.get('criterion', '?')[10:]})")
            if not controls.get("passed", True):
                lines.append("  !! the controls failed: this run's copy rates do not separate copies from "
                             "non-copies; see replication_controls")
        pdq = rep.get("pdq_cross_check") or {}
        if "n_copies_main" in pdq:
            confirmed = pdq.get("confirmed_share")
            lines.append(f"PDQ cross-check (Hamming <= 31): {pdq['n_copies_confirmed_by_pdq']} of "
                         f"{pdq['n_copies_main']} copies confirmed"
                         + (f" ({confirmed:.0%})" if confirmed is not None else "")
                         + f"; PDQ alone flags {pdq['n_pdq_copies']} ({pdq['n_pdq_copies_not_found_by_main']} not "
                         f"found by the main descriptor)")
        det = rep.get("detection") or {}
        scored = {k: v for k, v in det.items() if isinstance(v, dict) and "auc" in v}
        if scored:
            parts = [f"{k.replace('_', ' ')} AUC {_num(v['auc'])} {_ci(v.get('auc_ci'))}, TPR@1%FPR "
                     f"{_num(v['tpr_at_1pct_fpr'])}" for k, v in scored.items()]
            lines.append(f"Wen et al.'s detection score ({det.get('n_memorized')} of {det.get('n_prompts')} prompts "
                         f"memorized): " + "; ".join(parts))
        dup = (rep.get("splits") or {}).get("source_duplicated") or {}
        if "duplicated" in dup and "not_duplicated" in dup:
            d, o = dup["duplicated"], dup["not_duplicated"]
            lines.append(f"prompts of duplicated images: copy rate {_num(d.get('copy_rate'))}, mean top-1 "
                         f"{_num(d.get('mean'))} (n={d.get('n')}) vs not duplicated: copy rate "
                         f"{_num(o.get('copy_rate'))}, mean top-1 {_num(o.get('mean'))} (n={o.get('n')})")
        fid = rep.get("fid")
        if fid is not None:
            lines.append(f"FID (generations vs training images): {_num(fid, '.2f')}")
        elif rep.get("frechet_distance") is not None:
            lines.append(f"quality: Frechet distance in the copy descriptor's space (a stand-in, not FID): "
                         f"{_num(rep.get('frechet_distance'), '.4f')}")
    if complexity:
        for measure in ("entropy", "jpeg_bytes", "total_variation"):
            m = complexity.get(measure) or {}
            if m.get("status") == "ok":
                lines.append(f"complexity {measure} of matched training images vs similarity: Pearson r "
                             f"{_num(m.get('pearson_r'))} {_ci(m.get('pearson_ci'))} "
                             f"p={_num(m.get('pearson_p'), '.2g')}")
            elif m:
                lines.append(f"complexity {measure}: not computable ({m.get('reason')})")
    if plots:
        lines.append("figures:")
        for path in plots:
            stem = Path(path).name.rsplit(".", 1)[0]
            lines.append(f"  {short_path(path)}: {FIGURES.get(stem, stem.replace('_', ' '))}")
    lines.append("=" * 67)
    return "\n".join(lines)
