"""Checks before the first node of every ``kedro run``: a run that cannot succeed stops at once, with one message.

* **parameters**: the whole tree against :class:`~copying_study.schemas.ProjectParams` (every stage, whichever
  pipelines run: a typo in ``evaluate`` stops ``kedro run`` before ingest starts); an unknown top-level key, from a
  file or from ``--params``, is an error;
* **paths and weights**: everything the parameters of the stages about to run name on disk
  (:func:`copying_study.preflight.missing_inputs`), each missing one named;
* **datasets**: every input of the pipeline that no node of this run makes must already be in the catalog's storage
  (a stage run alone on a fresh clone): each missing one is named with the stage that makes it and the command to
  run first (:func:`missing_datasets`).

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


def producers(names: Iterable[str]) -> dict[str, str]:
    """``{dataset: stage}`` for the datasets among ``names`` that a stage pipeline makes (the stages of
    ``pipeline_registry.STAGES``, built here: a run loads only the pipelines it runs)."""
    import importlib

    from copying_study.pipeline_registry import STAGES

    out: dict[str, str] = {}
    for stage in STAGES:
        made = importlib.import_module(f"copying_study.pipelines.{stage}").create_pipeline().all_outputs()
        out.update({name: stage for name in names if name in made and name not in out})
    return out


def missing_datasets(pipeline: Any, catalog: Any, command: str) -> str | None:
    """The message for the inputs of ``pipeline`` that no node of the run makes and that are not stored yet (or
    ``None`` when every one is there): each dataset, the stage that makes it, and the command to run first."""
    from copying_study.pipeline_registry import STAGES

    free = sorted(n for n in pipeline.inputs() if not n.startswith("params:") and n != "parameters")
    missing = [n for n in free if n not in catalog or not catalog.exists(n)]
    if not missing:
        return None
    made_by = producers(missing)
    lines = [f"{name}: made by the {made_by[name]} stage" if name in made_by else f"{name}: no stage makes it "
             "(is it declared in conf/<env>/catalog*.yml?)" for name in missing]
    stages = sorted(set(made_by.values()), key=STAGES.index)
    chain = STAGES[STAGES.index(stages[0]):STAGES.index(stages[-1]) + 1] if stages else ()
    first = f"Run first: kedro run --pipelines={','.join(chain)}" if chain else ""
    return (f"`{command}` needs datasets that no earlier run has written; nothing was run:\n  "
            + "\n  ".join(lines) + (f"\n{first} (or `kedro run` for every stage)" if first else ""))


class RunChecksHooks:
    """Stops a run before its first node when its parameters or the paths they name are wrong."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog):
        check_parameters(catalog.load("parameters"))
        names = set(pipeline.inputs()) | {i for node in pipeline.nodes for i in node.inputs}
        check_inputs(stage_blocks(n for n in names if n in catalog), catalog)
        pipelines = ",".join(run_params.get("pipeline_names") or ["__default__"])
        message = missing_datasets(pipeline, catalog, f"kedro run --pipelines={pipelines}")
        if message:
            raise RunCheckError(message)
