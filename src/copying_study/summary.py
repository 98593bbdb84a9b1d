"""The short summary printed at the end of a ``kedro run`` that evaluated generations."""

from __future__ import annotations

from typing import Any


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(float(x), fmt)


def format_summary(replication: dict | None, complexity: dict | None, plots: list[str]) -> str:
    """Dataset similarity with its interval, fraction > 0.5, background, the duplicated/not split, the complexity
    correlations and where the plots are."""
    lines = ["", "=== copying_study: summary " + "=" * 40]
    if replication:
        ci = replication.get("dataset_similarity_ci") or [None, None]
        lines.append(f"dataset similarity (95th pct of top-1, {replication.get('descriptor', {}).get('name', '?')} "
                     f"descriptor): {_num(replication.get('dataset_similarity'))} "
                     f"[95% CI {_num(ci[0])}, {_num(ci[1])}] over {replication.get('n_generations')} generations")
        lines.append(f"fraction of generations with top-1 > 0.5: {_num(replication.get('fraction_above_0_5'))}")
        bg = replication.get("background") or {}
        lines.append(f"background (training vs nearest other training image): dataset similarity "
                     f"{_num(bg.get('dataset_similarity'))}, median {_num(bg.get('median'))}")
        dup = (replication.get("splits") or {}).get("source_duplicated") or {}
        if "duplicated" in dup and "not_duplicated" in dup:
            lines.append(f"prompts of duplicated images: mean top-1 {_num(dup['duplicated'].get('mean'))} "
                         f"(n={dup['duplicated'].get('n')}) vs not duplicated {_num(dup['not_duplicated'].get('mean'))}"
                         f" (n={dup['not_duplicated'].get('n')})")
        fid = replication.get("fid")
        if fid is not None:
            lines.append(f"FID: {_num(fid, '.2f')}")
        elif replication.get("frechet_distance") is not None:
            lines.append(f"Frechet distance ({replication.get('frechet_features')}): "
                         f"{_num(replication.get('frechet_distance'), '.4f')}")
    if complexity:
        for measure in ("entropy", "jpeg_bytes", "total_variation"):
            m = complexity.get(measure) or {}
            if m.get("status") == "ok":
                ci = m.get("pearson_ci") or [None, None]
                lines.append(f"complexity {measure}: Pearson r {_num(m.get('pearson_r'))} "
                             f"[{_num(ci[0])}, {_num(ci[1])}] p={_num(m.get('pearson_p'), '.2g')}, "
                             f"Spearman {_num(m.get('spearman_r'))}")
            elif m:
                lines.append(f"complexity {measure}: not computable ({m.get('reason')})")
    if plots:
        lines.append("plots: " + ", ".join(plots))
    lines.append("=" * 67)
    return "\n".join(lines)
