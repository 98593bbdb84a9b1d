"""``study``: ingest + dedup_clusters once, then per (cell, seed) a namespaced finetune → generate → evaluate →
complexity_analysis (train cells) or generate → evaluate → complexity_analysis on a train cell's model (inference
cells), each condensed by ``collect_cell``; ``collect_study`` writes ``study_results``, ``study_report`` and
``study_metrics``.

The registry cannot see parameters, so ``StudyParamsHooks`` records the run's ``params:study`` when Kedro creates
the run's context, just before it builds the pipelines: ``kedro run --env paper --pipelines=study`` builds the
paper's grid. Without a session (``kedro viz``, a notebook) the grid is read from the configuration files in
``<cwd>/conf`` for the environment in ``KEDRO_ENV`` (default ``local``). ``StudyParamsHooks`` also supplies each
cell's parameters and checks, before the first node, that the built grid is the run's.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.complexity_analysis.pipeline import create_pipeline as complexity_pipeline
from copying_study.pipelines.dedup_clusters.pipeline import create_pipeline as dedup_pipeline
from copying_study.pipelines.evaluate.pipeline import create_pipeline as evaluate_pipeline
from copying_study.pipelines.finetune.pipeline import create_pipeline as finetune_pipeline
from copying_study.pipelines.generate.pipeline import create_pipeline as generate_pipeline
from copying_study.pipelines.ingest.pipeline import create_pipeline as ingest_pipeline
from copying_study.pipelines.study.hooks import run_study
from copying_study.pipelines.study.nodes import collect_cell, collect_study
from copying_study.pipelines.tracking import log_metrics_node
from copying_study.study import Cell, expand_grid

logger = logging.getLogger(__name__)

SHARED_INPUTS = {"finetune_set", "training_set", "train_descriptors", "descriptor_calibration", "duplicate_clusters",
                 "control_set"}
SHARED_PARAMETERS = {"params:device": "params:device"}


def configured_study(project_path: Path | None = None, env: str | None = None) -> dict | None:
    """``params:study`` as the configuration files of ``project_path`` (default: cwd) declare it for ``env``
    (default: ``KEDRO_ENV``, else ``local``); ``None`` when there is no ``conf/`` or no study."""
    conf = (project_path or Path.cwd()) / "conf"
    if not (conf / "base").is_dir():
        return None
    from kedro.framework.project import settings

    env = env or os.environ.get("KEDRO_ENV") or "local"
    args = {k: v for k, v in settings.CONFIG_LOADER_ARGS.items() if k not in ("base_env", "default_run_env")}
    if not (conf / env).is_dir():
        env = "base"
    loader = OmegaConfigLoader(conf_source=str(conf), base_env="base", default_run_env="local", env=env, **args)
    return loader["parameters"].get("study")


def _collect_node() -> Node:
    return Node(
        collect_cell,
        inputs=["params:cell", "params:finetune", "params:generate", "params:evaluate", "params:complexity",
                "replication_summary", "evaluate_metrics", "complexity_correlations", "training_record",
                "replication_scores", "generations", "training_set"],
        outputs="study_cell",
        name="collect_cell",
    )


def cell_output(cell: Cell) -> str:
    """The name a cell's ``collect_cell`` output gets outside its namespace: ``study_cell_<ns>``."""
    return f"study_cell_{cell.namespace}"


def cell_pipeline(cell: Cell) -> Pipeline:
    """The namespaced stages of one (cell, seed)."""
    stages = generate_pipeline() + evaluate_pipeline() + complexity_pipeline() + Pipeline([_collect_node()])
    if cell.kind == "train":
        # kedro_run_id (the run's id, which the tracking hook provides) scopes each finetune's checkpoints
        return Pipeline(finetune_pipeline() + stages, namespace=cell.namespace,
                        inputs=set(SHARED_INPUTS) | {"kedro_run_id"},
                        outputs={"study_cell": cell_output(cell)}, parameters=dict(SHARED_PARAMETERS))
    source = cell.source_namespace
    inputs = {**{name: name for name in SHARED_INPUTS - {"finetune_set"}},
              "finetuned_model": f"{source}.finetuned_model", "training_record": f"{source}.training_record"}
    with warnings.catch_warnings():
        # An inference cell reads its train cell's model: a dataset of another namespace, by design. Kedro warns
        # about any input whose dotted prefix is not the node's own namespace.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'", category=UserWarning)
        return Pipeline(stages, namespace=cell.namespace, inputs=inputs, outputs={"study_cell": cell_output(cell)},
                        parameters=dict(SHARED_PARAMETERS))


def study_pipeline(cells: list[Cell]) -> Pipeline:
    """Data stages once, every cell, then ``collect_study``."""
    collect = Node(collect_study, inputs={"study": "params:study", "run_info": "run_info",
                                          **{c.namespace: cell_output(c) for c in cells}},
                   outputs=["study_results", "study_comparisons", "study_generations", "study_report", "study_metrics"],
                   name="collect_study")
    # the data stages in their namespaces, as in the registry: kedro-viz groups them, and DaskRunner runs each as one
    # task (ingest hands ``ingested_set`` to its captioning node in memory)
    data = (Pipeline(ingest_pipeline(), namespace="ingest", prefix_datasets_with_namespace=False)
            + Pipeline(dedup_pipeline(), namespace="dedup_clusters", prefix_datasets_with_namespace=False))
    return sum((cell_pipeline(c) for c in cells), data) + Pipeline([collect, log_metrics_node("study_metrics")])


def create_pipeline(**kwargs) -> Pipeline:
    """The study grid of the run (or of the configuration files, outside a session); an invalid grid gives a
    one-node pipeline that the study hook stops with the grid's error, so the other pipelines stay usable."""
    known, study = run_study(Path.cwd())
    try:
        study = study if known else configured_study()
        cells = expand_grid(study) if study else []
    except ValueError as error:
        logger.warning("study grid is invalid; `kedro run --pipelines=study` will fail: %s", error)
        return Pipeline([Node(expand_grid, "params:study", "study_grid_checked", name="validate_study_grid")])
    if not cells:
        return Pipeline([])
    return study_pipeline(cells)
