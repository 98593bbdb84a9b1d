"""``StudyParamsHooks``: the study pipeline is built from the run's own grid, gets every cell's parameters, and is
checked against them before its first node.

* ``after_context_created``: records ``params:study`` of the configuration the run was started with (``--env``
  included) before Kedro builds the pipelines, so ``create_pipeline`` builds that grid (:func:`run_study`);
* ``after_catalog_created``: adds ``params:<namespace>.<stage>`` for every cell (which no configuration file
  declares), computed from the full parameter tree by ``copying_study.study.cell_parameters``;
* ``before_pipeline_run``: the built cells, the model each inference cell samples, and the cells ``collect_study``
  gathers must be those of the run's ``params:study`` (:func:`wiring_problems`); otherwise the run stops before its
  first node. Registered in ``settings.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from copying_study.study import cell_parameters, expand_grid

logger = logging.getLogger(__name__)

_RUN_CONFIG: dict[str, Any] = {}


def run_study(project_path: Path) -> tuple[bool, Any]:
    """``(True, params:study)`` of the Kedro context last created for the project at ``project_path`` (its
    environment, ``--params`` included), or ``(False, None)`` when no context of that project was created in this
    process (``kedro viz``, a notebook without a session)."""
    known = _RUN_CONFIG.get("project_path") == Path(project_path).resolve()
    return (True, _RUN_CONFIG.get("study")) if known else (False, None)


def wiring_problems(pipeline: Any, study: Any) -> list[str]:
    """How the study nodes of ``pipeline`` differ from the grid ``study`` (``params:study`` of the run): cells the
    grid does not have, inference cells wired to another train cell's model, and cells ``collect_study`` gathers
    that are not the grid's."""
    from copying_study.pipelines.study.pipeline import cell_output
    from copying_study.schemas.study import SEED_SEPARATOR

    cells = {c.namespace: c for c in expand_grid(study)} if study else {}
    built = sorted({n.namespace.split(".")[0] for n in pipeline.nodes
                    if n.namespace and SEED_SEPARATOR in n.namespace.split(".")[0]})
    problems = []
    extra = [ns for ns in built if ns not in cells]
    if extra:
        problems.append(f"cells {extra} are not in the run's params:study")
    for ns in built:
        cell = cells.get(ns)
        generate = [n for n in pipeline.nodes if n.name == f"{ns}.generate_images"]
        if cell is None or cell.kind != "inference" or not generate:
            continue
        model = f"{cell.source_namespace}.finetuned_model"
        if model not in generate[0].inputs:
            wired = [i for i in generate[0].inputs if i.endswith(".finetuned_model")]
            problems.append(f"inference cell {ns} samples {wired} but params:study says from: {cell.source} "
                            f"({model})")
    for collect in (n for n in pipeline.nodes if n.name == "collect_study"):
        gathered = {i for i in collect.inputs if i.startswith("study_cell_")}
        expected = {cell_output(c) for c in cells.values()}
        if gathered != expected:
            problems.append(f"collect_study gathers {sorted(gathered - expected)} that the run's params:study does "
                            f"not have and misses {sorted(expected - gathered)}")
    return problems


def study_catalog_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """``{"params:<ns>.<key>": value}`` for every cell of ``parameters["study"]`` (empty without a study)."""
    if not isinstance(parameters, dict) or not parameters.get("study"):
        return {}
    out: dict[str, Any] = {}
    for cell in expand_grid(parameters["study"]):
        for key, value in cell_parameters(parameters, cell).items():
            out[f"params:{cell.namespace}.{key}"] = value
    return out


class StudyParamsHooks:
    """Adds each study cell's parameters to the catalog; a bad grid fails only a run that uses the study."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    @hook_impl
    def after_context_created(self, context):
        """Record the run's grid before Kedro builds the pipelines (it reads them right after this hook)."""
        try:
            study = context.config_loader["parameters"].get("study")
        except Exception as error:  # noqa: BLE001 - a broken configuration fails later, where Kedro reads it
            logger.debug("study: parameters not readable yet: %s", error)
            return
        _RUN_CONFIG.update(project_path=Path(context.project_path).resolve(), env=context.env, study=study)

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions):
        tree = parameters.get("parameters", parameters) if isinstance(parameters, dict) else {}
        self.error = None
        try:
            values = study_catalog_parameters(tree)
        except ValueError as error:  # other pipelines must still run; a study run raises it below
            self.error = error
            logger.warning("study grid is invalid (only the study pipeline needs it): %s", error)
            return
        for name, value in values.items():
            catalog[name] = value

    @hook_impl(tryfirst=True)  # before the MLflow hook opens a run
    def before_pipeline_run(self, run_params, pipeline, catalog):
        """Stop a study run whose grid is invalid, or whose built cells and wiring are not its ``params:study``."""
        from copying_study.run_checks import RunCheckError

        if not any(n.name == "collect_study" or n.name == "validate_study_grid" or "__s" in (n.namespace or "")
                   for n in pipeline.nodes):
            return
        if self.error is not None:
            raise RunCheckError(f"the study grid is invalid; nothing was run:\n  {self.error}")
        problems = wiring_problems(pipeline, catalog.load("params:study") if "params:study" in catalog else None)
        if problems:
            raise RunCheckError(
                "the study pipeline was not built from this run's params:study (a pipeline built from another "
                "environment's configuration?); nothing was run:\n  " + "\n  ".join(problems))
