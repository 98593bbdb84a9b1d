"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from omegaconf.resolvers import oc

from copying_study.console import ConsoleHooks, quiet_third_party

# Before Kedro builds the config loader and imports the pipelines (transformers, diffusers) and kedro-mlflow's hook
# module: see console.py.
quiet_third_party()

from copying_study.hooks import (  # noqa: E402 - after quiet_third_party
    MlflowTrackingHooks,
    ProjectMlflowHook,
    project_artifact_location,
    project_tracking_uri,
)
from copying_study.pipelines.study.hooks import StudyParamsHooks  # noqa: E402
from copying_study.run_checks import RunChecksHooks  # noqa: E402

# The run record and what the project adds to the MLflow run (first: `copying-study audit` reads HOOKS[0].record);
# kedro-mlflow's hook with the project's additions (copying_study.hooks: it replaces the instance the plugin
# registers itself, disabled below); the study grid's per-cell parameters (params:<cell>.<stage>); the checks that
# stop a run before its first node (copying_study.run_checks); `--verbose` bringing back the per-dataset log lines
# (copying_study.console).
HOOKS = (MlflowTrackingHooks(), ProjectMlflowHook(), StudyParamsHooks(), RunChecksHooks(), ConsoleHooks())

# kedro-viz registers hooks that write .viz/ files on every run; the DAG view does not need them. kedro-mlflow's own
# hook instance is replaced by ProjectMlflowHook above (its CLI, `kedro mlflow ui`, stays).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz", "kedro_mlflow")

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {
        "oc.env": oc.env,
        # conf/base/mlflow.yml: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db; artifacts in <project>/mlruns
        "cs.mlflow_tracking_uri": project_tracking_uri,
        "cs.mlflow_artifact_location": project_artifact_location,
    },
}
