"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from omegaconf.resolvers import oc

from copying_study.console import ConsoleHooks, quiet_third_party
from copying_study.hooks import MlflowTrackingHooks
from copying_study.pipelines.study.hooks import StudyParamsHooks
from copying_study.run_checks import RunChecksHooks

# Before Kedro builds the config loader and imports the pipelines (transformers, diffusers): see console.py.
quiet_third_party()

# MLflow tracking + the run record (first: `copying-study audit` reads HOOKS[0].record); the study grid's per-cell
# parameters (params:<cell>.<stage>); the checks that stop a run before its first node (copying_study.run_checks);
# `--verbose` bringing back the per-dataset log lines (copying_study.console).
HOOKS = (MlflowTrackingHooks(), StudyParamsHooks(), RunChecksHooks(), ConsoleHooks())

# kedro-viz registers hooks that write .viz/ files on every run; the DAG view does not need them.
# (Names are distribution metadata names: kedro-mlflow would be "kedro_mlflow"; it is not used here.)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"oc.env": oc.env},
}
