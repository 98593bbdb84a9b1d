"""Checks before the first node of every ``kedro run``: a run that cannot succeed stops at once, with one message.

* **parameters**: the whole tree against :class:`~copying_study.schemas.ProjectParams` (every stage, whichever
  pipelines run: a typo in ``evaluate`` stops ``kedro run`` before ingest starts); an unknown top-level key, from a
  file or from ``--params``, is an error;
* **paths and weights**: everything the parameters of the stages about to run name on disk
  (:func:`copying_study.preflight.missing_inputs`), each missing one named.

The hook runs before the MLflow hook opens a run (``tryfirst``). Its error, :class:`RunCheckError`, is printed by the
Kedro CLI as one message without a traceback; in Python it is a ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import click
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class RunCheckError(click.ClickException, ValueError):
    """A run stopped before its first node; the message says what to fix. The Kedro CLI prints it without a
    traceback (it is a ``click.ClickException``)."""


def stage_blocks(names: Iterable[str]) -> dict[str, list[str]]:
    """``{stage block: [parameter dataset, ...]}`` for the ``params:`` inputs of a pipeline, e.g.
    ``{"finetune": ["params:finetune", "params:full_ddf5__s0.finetune"]}``."""
    from copying_study.schemas import STAGE_SCHEMAS

    out: dict[str, list[str]] = {block: [] for block in STAGE_SCHEMAS}  # in the stages' order
    for name in sorted(names):
        if name.startswith("params:") and (block := name.rsplit(".", 1)[-1].removeprefix("params:")) in STAGE_SCHEMAS:
            out[block].append(name)
    return {block: datasets for block, datasets in out.items() if datasets}


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Every parameter of every stage against its schema; :class:`RunCheckError` lists each bad key."""
    from copying_study.schemas import ParameterError, ProjectParams

    try:
        ProjectParams.from_params(parameters)
    except ParameterError as error:
        raise RunCheckError(f"bad parameters (conf/<env>/parameters*.yml or --params); nothing was run:\n  "
                            f"{str(error).replace(chr(10), chr(10) + '  ')}") from None


def check_inputs(blocks: Mapping[str, list[str]], catalog: Any) -> None:
    """Every path and model weight the stages about to run name (one line per missing one)."""
    from copying_study.preflight import missing_inputs
    from copying_study.schemas import STAGE_SCHEMAS

    problems: list[str] = []
    for block, datasets in blocks.items():
        for name in datasets:
            where = name.removeprefix("params:")
            params = STAGE_SCHEMAS[block].from_params(catalog.load(name), where).as_dict()
            problems += missing_inputs(block, params, where)
    if problems:
        lines = "\n  ".join(dict.fromkeys(problems))
        raise RunCheckError(f"this run needs inputs that are missing; nothing was run:\n  {lines}")


class RunChecksHooks:
    """Stops a run before its first node when its parameters or the paths they name are wrong."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog):
        check_parameters(catalog.load("parameters"))
        names = set(pipeline.inputs()) | {i for node in pipeline.nodes for i in node.inputs}
        check_inputs(stage_blocks(n for n in names if n in catalog), catalog)
