"""``StudyParamsHooks``: the parameters of every study cell, ``params:<namespace>.<stage>``, added to the catalog.

The namespaced copies of finetune/generate/evaluate/complexity_analysis in the ``study`` pipeline read
``params:<ns>.finetune`` etc., which no configuration file declares: this hook computes them from the full
parameter tree (``copying_study.study.cell_parameters``) when the catalog is created. Register it in
``settings.py``: ``HOOKS = (MlflowTrackingHooks(), StudyParamsHooks())``.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from copying_study.study import cell_parameters, expand_grid

logger = logging.getLogger(__name__)


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
        missing = sorted(n for n in pipeline.inputs() if n.startswith("params:") and "__s" in n and n not in catalog)
        if self.error is not None and missing:
            raise ValueError(f"the study grid is invalid: {self.error}") from self.error
        if missing:
            raise ValueError(
                f"study cells {missing[:5]} are not in the parameters' study grid: the pipeline's cells come from "
                "the configuration files (conf/<env>/parameters_study.yml); change cells and seeds there, not "
                "with --params")
