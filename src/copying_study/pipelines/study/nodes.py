"""Thin nodes of the ``study`` pipeline over :mod:`copying_study.study`.

``collect_cell`` runs inside each cell's namespace (it condenses the cell into a results row plus its strongest
copies and logs a nested MLflow run); ``collect_study`` gathers every cell into ``study_results`` and the report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from copying_study.hooks import flatten, tracking_on
from copying_study.schemas import StudyParams
from copying_study.study import (
    STAGES,
    render_report,
    results_row,
    results_table,
    seed_summary,
    top_copies,
)
from copying_study.study.findings import generation_values, study_tables

logger = logging.getLogger(__name__)


def log_cell_run(cell: Mapping[str, Any], params: Mapping[str, Any], metrics: Mapping[str, Any]) -> str | None:
    """A nested MLflow run for one cell (when an MLflow run is active): its flattened parameters, its metrics and
    the tags ``study.cell``, ``study.seed``, ``study.namespace``, ``study.kind``, ``study.from``. Returns its id."""
    if not tracking_on():
        return None
    import mlflow

    if mlflow.active_run() is None:
        logger.info("study: no active MLflow run; cell %s is not logged as a nested run", cell["namespace"])
        return None
    with mlflow.start_run(run_name=cell["namespace"], nested=True) as run:
        mlflow.set_tags({"study.cell": cell["name"], "study.seed": str(cell["seed"]),
                         "study.namespace": cell["namespace"], "study.kind": cell["kind"],
                         "study.from": str(cell.get("from") or "")})
        flat = {k[:250]: (v if isinstance(v, str) else json.dumps(v, default=str))[:6000]
                for k, v in flatten(dict(params)).items()}
        mlflow.log_params(flat)
        numbers = {k[:250]: float(v) for k, v in flatten(dict(metrics)).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        mlflow.log_metrics(numbers)
        return run.info.run_id


def collect_cell(
    cell: dict[str, Any],
    finetune: dict[str, Any],
    generate: dict[str, Any],
    evaluate: dict[str, Any],
    complexity: dict[str, Any],
    replication_summary: dict[str, Any],
    evaluate_metrics: dict[str, Any],
    complexity_correlations: dict[str, Any],
    training_record: dict[str, Any],
    replication_scores: pd.DataFrame,
    generations: pd.DataFrame,
    training_set: pd.DataFrame,
) -> dict[str, Any]:
    """One cell's ``study_results`` row and its strongest copies (PNG bytes); logs the cell's nested MLflow run."""
    row = results_row(cell, finetune, generate, replication_summary, complexity_correlations, training_record)
    params = dict(zip(STAGES, (finetune, generate, evaluate, complexity), strict=True))
    run_id = log_cell_run(cell, params, {**evaluate_metrics, **{k: v for k, v in row.items()
                                                                 if k.startswith("entropy_") or k == "quality"}})
    row["mlflow_run_id"] = run_id or ""
    copies = top_copies(replication_scores, generations, training_set, int(cell["gallery_n"]))
    values = generation_values(cell, replication_scores)
    logger.info("study: %s copy rate %.3f, dataset similarity %.3f", cell["namespace"], float(values["copy"].mean()),
                row["dataset_similarity"])
    return {"row": row, "top_copies": copies, "generations": values}


def collect_study(study: dict[str, Any], run_info: Mapping[str, Any], **cells: dict[str, Any]
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str, dict[str, float]]:
    """``study_results`` (one row per cell and seed, with the cell's intervals), ``study_comparisons`` (the paper's
    stated differences, paired by seed), ``study_generations`` (every generation's top-1 and copy flag),
    ``study_report`` (HTML) and ``study_metrics``.

    ``run_info`` is the run's identifiers (the tracking hook's ``run_info`` dataset); ``cells`` maps each cell
    namespace to its ``collect_cell`` output.
    """
    grid = StudyParams.from_params(study)
    if not cells:
        raise ValueError("collect_study got no cells: the study grid is empty")
    rows = [dict(c["row"]) for c in cells.values()]
    run_ids = {r["namespace"]: r.pop("mlflow_run_id", "") for r in rows}
    gens = pd.concat([c["generations"] for c in cells.values()], ignore_index=True)
    results, comparisons, gens = study_tables(results_table(rows), gens, grid)
    results["mlflow_run_id"] = results["namespace"].map(run_ids)
    galleries: dict[str, list[dict[str, Any]]] = {}
    shown: set[str] = set()
    for ns in sorted(cells, key=lambda n: (cells[n]["row"]["cell"], cells[n]["row"]["seed"])):
        row = cells[ns]["row"]
        if row["cell"] not in shown:  # the first seed of each cell
            shown.add(row["cell"])
            galleries[f"{row['cell']} (seed {row['seed']})"] = cells[ns]["top_copies"]
    report = render_report(results, comparisons, galleries, dict(run_info or {}))
    return results, comparisons, gens, report, seed_summary(results, comparisons)
