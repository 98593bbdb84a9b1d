"""What a ``kedro run`` prints on a terminal: one line per node, the project's own messages, warnings, and the
closing summary; ``COPYING_STUDY_VERBOSE=1 kedro run`` brings back Kedro's per-dataset and per-task lines (Kedro
1.7's ``kedro run`` has no ``--verbose`` option; the commands that have one, e.g. ``kedro -v``-style plugin
commands, set it too).

* :func:`quiet_third_party` (called from ``settings.py``, before any pipeline module imports transformers or
  diffusers) lowers transformers', diffusers' and MLflow's own log levels to errors/warnings (an environment
  variable the user set wins) and hides the deprecation warning Kedro 1.7 and kedro-mlflow 2.0 trigger in
  OmegaConf 2.4 (``register_new_resolver``) and MLflow's type-hint warning on kedro-mlflow's pyfunc class: nothing
  in this project can change those calls.
* :class:`ConsoleFilter` (put on the root logger's handlers by :class:`ConsoleHooks`: Kedro refuses project
  classes in ``conf/logging.yml``) drops Kedro's "Completed node" /
  "Completed k out of n tasks" / synchronous-mode lines, kedro-mlflow's "Registering new custom resolver" line and the lines of the
  ``log_<stage>_metrics`` nodes (a metrics output copied to MLflow) and of the figure nodes (``plot_*``: the closing
  summary lists every figure), and
  shortens "Running node: name: func([...]) -> [...]" to
  the node's name. Records at WARNING or above always pass.
* :class:`ConsoleHooks` turns both back on when verbose (``COPYING_STUDY_VERBOSE=1``): the data catalog's "Loading data from" / "Saving data
  to" lines (``kedro.io.data_catalog`` is at WARNING in ``conf/logging.yml``) and every line the filter drops.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from kedro.framework.hooks import hook_impl

THIRD_PARTY_LEVELS = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                      "MLFLOW_LOGGING_LEVEL": "WARNING"}
DATA_CATALOG_LOGGER = "kedro.io.data_catalog"
FIGURE_NODE_PREFIXES = ("plot_", "dedup_plot_")  # nodes that draw a figure (no console line of their own)
_DROPPED = ("Completed node: %s", "Completed %d out of %d tasks", "Using synchronous mode")


def quiet_third_party() -> None:
    """Lower third-party verbosity for this process (unless the user set the variables) and hide Kedro's own
    OmegaConf deprecation warning."""
    for name, level in THIRD_PARTY_LEVELS.items():
        os.environ.setdefault(name, level)
    warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning,
                            module=r"kedro(_mlflow)?\.")
    # kedro-mlflow defines a pyfunc model class (for its pipeline_ml_factory, unused here) without type hints: MLflow
    # warns when the class is defined, when Kedro's CLI imports the plugin's commands, inside its own
    # `simplefilter("once")` that no filter can override; only the display can drop it
    if not getattr(warnings.showwarning, "_copying_study", False):
        warnings.showwarning = _drop_known_noise(warnings.showwarning)


#: warnings that third-party code forces through every filter (see quiet_third_party): dropped at display
FORCED_NOISE = (re.compile(r"(\x1b\[\d+m)?Add type hints to the `predict` method"),)


def _drop_known_noise(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not any(pattern.match(str(message)) for pattern in FORCED_NOISE):
            show(message, category, filename, lineno, file, line)

    showwarning._copying_study = True
    return showwarning


def cli_verbose() -> bool:
    """Whether the console should be verbose: ``COPYING_STUDY_VERBOSE`` is set to 1/true/yes, or the Kedro command
    was given ``--verbose`` (Kedro records it on ``KedroCliError``; ``kedro run`` itself has no such option)."""
    from kedro.framework.cli.utils import KedroCliError

    env = os.environ.get("COPYING_STUDY_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(KedroCliError.VERBOSE_ERROR)


class ConsoleFilter(logging.Filter):
    """One line per node on the console (see the module docstring); ``verbose`` lets everything through."""

    def __init__(self) -> None:
        super().__init__()
        self.verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.WARNING:
            return True
        if record.name.startswith("kedro.runner") and str(record.msg).startswith(_DROPPED):
            return False
        if record.name.startswith("kedro_mlflow") and str(record.msg).startswith("Registering new custom resolver"):
            return False  # kedro-mlflow's resolver for random run names, registered on every run
        if record.name == "kedro.pipeline.node" and record.msg == "Running node: %s" and record.args:
            name = str(record.args[0]).split(": ", 1)[0]
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("log_") and leaf.endswith("_metrics"):
                return False  # a *_metrics output copied to MLflow (copying_study.pipelines.tracking): bookkeeping
            if leaf.startswith(FIGURE_NODE_PREFIXES):
                return False  # a figure: the closing summary lists each one with what it shows
            record.args = (name,)
        return True


CONSOLE_FILTER = ConsoleFilter()


class ConsoleHooks:
    """Puts :data:`CONSOLE_FILTER` on the root logger's handlers; for ``kedro run --verbose`` the data catalog's
    load/save lines and the filtered runner lines come back."""

    @hook_impl
    def after_context_created(self, context) -> None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(CONSOLE_FILTER)  # once: logging skips a filter already there
        CONSOLE_FILTER.verbose = cli_verbose()
        if CONSOLE_FILTER.verbose:
            logging.getLogger(DATA_CATALOG_LOGGER).setLevel(logging.INFO)
            # the project's detail lines (the calibration table, each complexity correlation, ...) are at DEBUG
            logging.getLogger("copying_study").setLevel(logging.DEBUG)
            for handler in logging.getLogger().handlers:
                handler.setLevel(min(handler.level, logging.DEBUG))
