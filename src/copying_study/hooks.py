"""MLflow tracking for every ``kedro run``: one MLflow run per Kedro run, kept by kedro-mlflow and this project.

**kedro-mlflow** (``conf/base/mlflow.yml``, :class:`ProjectMlflowHook`): the tracking store and the experiment, the
run's start and end (``FAILED`` when the run fails), the parameters each node reads (flattened,
``finetune.steps``), the run-parameter tags (``run_id``, ``env``, ``kedro_command`` ...), the files saved to the
catalog's ``MlflowArtifactDataset`` entries (plots, records, reports), and the metrics saved to its
``MlflowMetricsHistoryDataset`` entries (every stage's ``*_metrics`` output, copied by a ``log_*_metrics`` node).

**This project** adds what the plugin does not do:

* :class:`ProjectMlflowHook` (a subclass of the plugin's hook, registered in ``settings.py`` in place of the one
  the plugin registers itself): ``COPYING_STUDY_MLFLOW=0`` turns tracking off for every pipeline; a node's
  parameters are logged in one batched call and each only once (the plugin makes one call per parameter per node:
  minutes of sqlite writes for the study's 500 nodes); MLflow's system metrics on runs that finetune; the run name
  ``<pipelines>:<kedro run id>``; and the Dask runner's protocol, so workers log into the same run.
* :class:`MlflowTrackingHooks`: tags with the full git commit and the dirty flag, the Kedro run id, environment,
  pipelines, load versions and runtime parameters; the version of every dataset loaded and saved (tags and
  ``dataset_versions.json``); the run manifest (``run_manifest.json``, what ``copying-study audit`` re-runs);
  the controls' verdicts and the copy threshold as tags; the finetuned model's folder and checksum as tags;
  folders of files (sample grids: ``MlflowArtifactDataset`` logs single files) as artifacts; the closing summary.
  The study's cells log their child runs themselves (``pipelines/study/nodes.py``).

The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project>/mlflow.db`` with artifacts in
``<project>/mlruns`` (the ``cs.mlflow_tracking_uri`` resolver in ``settings.py``): it works on a fresh clone with
no set-up. ``kedro mlflow ui`` opens it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks import MlflowHook

from copying_study.manifest import build_manifest, folder_checksum
from copying_study.metrics.tracking import flatten, metrics_to_log
from copying_study.run_versions import pin_run_versions
from copying_study.utils.threads import current_threads

__all__ = ["ProjectMlflowHook", "MlflowTrackingHooks", "tracking_uri", "artifact_location", "tracking_on",
           "project_tracking_uri", "project_artifact_location",
           "git_state", "flatten", "metrics_to_log", "saved_path", "system_metrics_wanted"]

logger = logging.getLogger(__name__)

TRACKING_ENV = "COPYING_STUDY_MLFLOW"  # 0 / false / off / no: no MLflow run at all
SYSTEM_METRICS_ENV = "COPYING_STUDY_SYSTEM_METRICS"  # auto (runs that finetune) | 1 (every run) | 0 (never)
MANIFEST_DATASET = "run_manifest"
RUN_ID_DATASET = "kedro_run_id"
RUN_INFO_DATASET = "run_info"  # the run's identifiers for nodes that print them (the study report)
EXPERIMENT_ATTEMPTS = 6  # ProjectMlflowHook.after_context_created: tries when two runs create the experiment at once


def tracking_on() -> bool:
    """Whether runs are tracked in MLflow (``COPYING_STUDY_MLFLOW``, default on)."""
    return os.environ.get(TRACKING_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def tracking_uri(project_path: Path | str = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite store ``sqlite:///<project>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(project_path).resolve().as_posix()}/mlflow.db"


def artifact_location(project_path: Path | str = ".") -> str | None:
    """Where a new experiment keeps its artifacts: ``<project>/mlruns`` with the project's own store; the tracking
    server's default when ``MLFLOW_TRACKING_URI`` names one."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (Path(project_path).resolve() / "mlruns").as_uri()


def _project_path() -> Path:
    from kedro.utils import find_kedro_project

    return find_kedro_project(Path.cwd()) or Path.cwd()


def project_tracking_uri() -> str:
    """``conf/base/mlflow.yml``'s tracking URI (resolver ``cs.mlflow_tracking_uri``): :func:`tracking_uri` of the
    Kedro project the current directory is in (a notebook in ``notebooks/`` included)."""
    return tracking_uri(_project_path())


def project_artifact_location() -> str | None:
    """``conf/base/mlflow.yml``'s artifact location of a new experiment (resolver ``cs.mlflow_artifact_location``)."""
    return artifact_location(_project_path())


def system_metrics_wanted(pipeline: Any) -> bool:
    """Whether the run's MLflow run records system metrics (MLflow's own system-metrics logging: CPU, memory, disk,
    network, and GPU utilisation and memory when ``nvidia-ml-py`` is installed): by default when the run trains a
    model (a ``finetune_model`` node, a study cell's included); ``COPYING_STUDY_SYSTEM_METRICS=1`` / ``0`` for
    every run / none. The sampling interval is MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (10 s)."""
    choice = os.environ.get(SYSTEM_METRICS_ENV, "auto").strip().lower()
    if choice in ("1", "true", "on", "yes"):
        return True
    if choice in ("0", "false", "off", "no"):
        return False
    if choice != "auto":
        raise ValueError(f"{SYSTEM_METRICS_ENV}={choice!r}: use auto, 1 or 0")
    return any(n.name.split(".")[-1] == "finetune_model" for n in pipeline.nodes)


def git_state(path: Path) -> dict[str, Any]:
    """Commit sha and dirtiness of the git tree at ``path`` (``None`` when not a git checkout)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=path, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def dataset_version(dataset: Any, kind: str) -> str | None:
    """The version a versioned dataset loaded or saved (``None`` for unversioned datasets)."""
    try:
        if kind == "load" and hasattr(dataset, "resolve_load_version"):
            return dataset.resolve_load_version()
        if kind == "save" and hasattr(dataset, "resolve_save_version"):
            return dataset.resolve_save_version()
    except Exception:  # noqa: BLE001 - an unversioned dataset or no version yet
        return None
    return None


def dataset_config(conf_catalog: dict[str, Any], catalog: Any, name: str) -> dict[str, Any]:
    """The catalog entry of ``name``: ``conf_catalog`` (the catalog files, as ``after_catalog_created`` gets them),
    else the dataset factory pattern it matches; a wrapper's (``VersionedMlflowArtifactDataset``) inner ``dataset``
    with the wrapper's ``versioned``. ``{}`` for datasets the configuration does not declare."""
    config = conf_catalog.get(name)
    if not isinstance(config, dict):
        try:
            config = catalog.config_resolver.resolve_pattern(name) or {}
        except Exception:  # noqa: BLE001 - a catalog without a config resolver
            config = {}
    inner = config.get("dataset")
    if isinstance(inner, dict) and "filepath" in inner:  # the wrapper is versioned, its dataset writes the file
        return {**inner, "versioned": bool(inner.get("versioned") or config.get("versioned"))}
    return dict(config)


def saved_path(conf_catalog: dict[str, Any], catalog: Any, name: str, project_path: Path | str = ".") -> Path | None:
    """Where the file dataset ``name`` wrote its data: ``filepath`` of its catalog entry (relative to
    ``project_path``), or for a versioned one Kedro's layout ``<filepath>/<save version>/<file name>``. ``None``
    when the entry has no local ``filepath``."""
    config = dataset_config(conf_catalog, catalog, name)
    filepath = config.get("filepath")
    if not isinstance(filepath, str) or "://" in filepath:
        return None
    path = Path(project_path) / filepath
    if config.get("versioned"):
        version = dataset_version(catalog.get(name), "save")
        if not version:
            return None
        return path / version / PurePosixPath(filepath).name
    return path


def is_mlflow_dataset(dataset: Any) -> bool:
    """A kedro-mlflow dataset (artifact or metrics): the ones its logging switch applies to."""
    return type(dataset).__name__.startswith("Mlflow") and hasattr(dataset, "_logging_activated")


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook with the project's additions (module docstring). ``settings.py`` registers it and
    disables the instance the plugin registers itself (``DISABLE_HOOKS_FOR_PLUGINS``), so there is one."""

    #: what a Dask worker needs to log into the driver's run (copying_study.runner)
    REMOTE_ATTRIBUTES = ("run_id", "flatten", "recursive", "sep", "long_params_strategy")

    def __init__(self) -> None:
        super().__init__()
        self._is_mlflow_enabled = False  # until a run starts (a Dask worker's copy: until start_remote)
        self.long_params_strategy = "truncate"
        self._pending: dict[str, Any] = {}
        self._logged: dict[str, str] = {}
        self._remote = False

    @hook_impl
    def after_context_created(self, context) -> None:
        """The plugin's set-up (store, experiment), retried when another run creates the experiment at the same
        moment: on a fresh clone two runs both find no experiment, and the slower one's create fails on the store's
        unique constraint (or a locked sqlite file) while the winner's experiment is there to use."""
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        self.run_id = None
        self._logged = {}
        for attempt in range(EXPERIMENT_ATTEMPTS):
            try:
                super().after_context_created(context)
                return
            except (MlflowException, SQLAlchemyError) as error:
                if attempt == EXPERIMENT_ATTEMPTS - 1:
                    raise
                logger.info("MLflow experiment is being created by another run (%s); retrying",
                            str(error).splitlines()[0][:200])
                time.sleep(0.2 * 2**attempt)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        import mlflow

        names = run_params.get("pipeline_names") or ["__default__"]
        if not tracking_on():
            logger.info("MLflow tracking is off (%s=0)", TRACKING_ENV)
            self.mlflow_config.tracking.disable_tracking.pipelines = list(names)
        if self.mlflow_config.tracking.run.name is None:
            self.mlflow_config.tracking.run.name = f"{'+'.join(names)}:{run_params['run_id']}"
        system = tracking_on() and system_metrics_wanted(pipeline)
        if system:
            mlflow.enable_system_metrics_logging()  # read by mlflow.start_run in the plugin's hook
        try:
            super().before_pipeline_run(run_params, pipeline, catalog)
        finally:
            if system:
                mlflow.disable_system_metrics_logging()
        if not self._is_mlflow_enabled:
            self.run_id = None

    @hook_impl
    def before_dataset_saved(self, dataset_name, data, node) -> None:
        """A kedro-mlflow dataset logs only into this run: not when tracking is off (the plugin switches only the
        datasets the catalog held when the run started, not those a dataset factory makes later, a study cell's),
        and never into a run MLflow would start implicitly (its fluent API does when no run is active)."""
        try:
            dataset = self._catalog_dataset(dataset_name)
        except Exception:  # noqa: BLE001
            return
        if dataset is not None and is_mlflow_dataset(dataset):
            import mlflow

            dataset._logging_activated = bool(self._is_mlflow_enabled and mlflow.active_run() is not None)

    def _catalog_dataset(self, name: str):
        catalog = getattr(self, "_catalog", None)
        return catalog.get(name) if catalog is not None else None

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions):
        self._catalog = catalog
        super().after_catalog_created(catalog, conf_catalog, conf_creds, parameters, save_version, load_versions)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        """The plugin's parameter logging, gathered into one ``log_params`` call per node; a parameter already
        logged with the same value is not sent again. The plugin's run is re-opened only in a thread without it."""
        import mlflow

        self._pending = {}
        run_id, active = self.run_id, mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            # the plugin re-opens its run for threads that lack it; with `nested: true` it would push the run onto
            # this thread's stack once per node, and the run's end would pop only one of them
            self.run_id = None
        try:
            super().before_node_run(node, catalog, inputs, is_async)
        finally:
            self.run_id = run_id
        if self._pending and self._is_mlflow_enabled:
            mlflow.log_params(self._pending)
            self._logged.update({k: str(v) for k, v in self._pending.items()})
        self._pending = {}

    def _log_param(self, name: str, value: Any) -> None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            if self.long_params_strategy != "truncate":
                return super()._log_param(name, value)
            text = text[:MAX_PARAM_VAL_LENGTH]
        if self._logged.get(name) != text:
            self._pending[name] = text

    # -- distributed runs (copying_study.runner.DaskRunner) ----------------------------------------------
    def remote_state(self) -> dict[str, Any]:
        """On the driver: the run a worker logs into and how it logs parameters (nothing when tracking is off)."""
        if not self._is_mlflow_enabled or self.run_id is None:
            return {}
        import mlflow

        return {"tracking_uri": mlflow.get_tracking_uri(),
                **{key: getattr(self, key) for key in self.REMOTE_ATTRIBUTES}}

    def start_remote(self, catalog, state: dict[str, Any] | None, group: str) -> None:
        """On a worker, before a group's first node: resume the driver's run in this process (the study's cells
        open their child runs under it, as in a sequential run), or log nothing when the driver does not track."""
        self._catalog, self._logged, self._pending = catalog, {}, {}
        self._is_mlflow_enabled = bool(state and state.get("run_id"))
        self._remote = self._is_mlflow_enabled
        self.run_id = None
        if not self._is_mlflow_enabled:
            return
        import mlflow

        for key in self.REMOTE_ATTRIBUTES:
            setattr(self, key, state[key])
        mlflow.set_tracking_uri(state["tracking_uri"])
        mlflow.start_run(run_id=self.run_id)
        # the plugin's node hook re-opens the run for threads that have none: this process has it open
        self.mlflow_config = _RemoteConfig()

    def finish_remote(self, failed: bool) -> dict[str, Any]:
        """On a worker, after a group: let go of the run (the driver ends it)."""
        if self._remote:
            import mlflow

            mlflow.end_run(status="RUNNING")
        self._remote, self._catalog, self.run_id, self._is_mlflow_enabled = False, None, None, False
        return {}


class _RemoteConfig:
    """The part of kedro-mlflow's configuration its node hook reads, on a Dask worker."""

    class tracking:  # noqa: N801 - mirrors KedroMlflowConfig.tracking.run.nested
        class run:  # noqa: N801
            nested = True


class MlflowTrackingHooks:
    """The run record (``self.record``, the run manifest) and what it puts on the MLflow run (module docstring).

    It runs after kedro-mlflow has started the run (``trylast``) and before it ends it (``tryfirst``)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self._catalog = None
        self._conf_catalog: dict[str, Any] = {}
        self._project_path = Path(".")
        self._active = False

    def _saved_path(self, name: str) -> Path | None:
        return saved_path(self._conf_catalog, self._catalog, name, self._project_path)

    # -- catalog ---------------------------------------------------------------------------------------
    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions):
        self._catalog = catalog
        self._conf_catalog = dict(conf_catalog or {})
        self._project_path = Path.cwd()
        self._active = False
        catalog[RUN_ID_DATASET] = save_version  # the run id, for nodes whose files belong to one run (checkpoints)
        catalog[RUN_INFO_DATASET] = {"kedro run id": save_version}  # completed in before_pipeline_run
        self.record = {
            "save_version": save_version,
            "load_versions_requested": dict(load_versions or {}),
            # Kedro passes {"parameters": <all params>, "params:<key>": ...}: keep the resolved tree
            "parameters": parameters.get("parameters", parameters) if isinstance(parameters, dict) else {},
            "datasets_loaded": {},
            "datasets_saved": {},
            "artifacts": [],
        }

    # -- pipeline ---------------------------------------------------------------------------------------
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params, pipeline, catalog):
        self._catalog = catalog
        project_path = Path(run_params.get("project_path") or ".")
        self._project_path = project_path
        git = git_state(project_path)
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        self.record.update(
            {
                "run_id": run_params["run_id"],
                "env": run_params.get("env"),
                "pipeline_names": pipelines,
                "runtime_params": run_params.get("runtime_params") or {},
                "runner": run_params.get("runner"),
                "git": git,
                "project_path": str(project_path),
            }
        )
        free_inputs = {n for n in pipeline.inputs() if not n.startswith("params:") and n != "parameters"}
        self.record["inputs_at_start"] = pin_run_versions(catalog, pipeline.all_outputs(), free_inputs,
                                                          run_params.get("load_versions"))
        import mlflow

        self._active = tracking_on() and mlflow.active_run() is not None  # started by kedro-mlflow's hook
        if not self._active:
            catalog.save(RUN_INFO_DATASET, self._run_info())
            return
        self.record["mlflow_run_id"] = mlflow.active_run().info.run_id
        catalog.save(RUN_INFO_DATASET, self._run_info())
        mlflow.set_tags({
            "kedro.run_id": run_params["run_id"],
            "kedro.env": str(run_params.get("env")),
            "kedro.pipelines": ",".join(pipelines),
            "kedro.version": str(run_params.get("kedro_version")),
            "git.commit": str(git["commit"]),
            "git.dirty": str(git["dirty"]),
            "mlflow.source.git.commit": str(git["commit"]),
            "kedro.load_versions": json.dumps(run_params.get("load_versions") or {}),
            "kedro.runtime_params": json.dumps(run_params.get("runtime_params") or {}, default=str),
        })

    def _run_info(self) -> dict[str, Any]:
        """The run's identifiers (Kedro run id, environment, git commit and dirty flag, MLflow run id)."""
        git = self.record.get("git") or {}
        info = {"kedro run id": self.record.get("run_id"), "kedro env": self.record.get("env"),
                "git commit": git.get("commit"), "git dirty": git.get("dirty"),
                "mlflow run id": self.record.get("mlflow_run_id")}
        return {k: v for k, v in info.items() if v is not None}

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog):
        self._write_manifest(catalog)
        self._print_summary(catalog)
        self._finish()

    def _print_summary(self, catalog) -> None:
        """Print the study's headline numbers when this run evaluated generations."""
        saved = self.record.get("datasets_saved") or {}
        if "replication_summary" not in saved and "complexity_correlations" not in saved:
            return
        from copying_study.summary import format_summary

        def load(name):
            return catalog.load(name, version=saved[name]) if saved.get(name) else None

        plots = [str(p) for p in self.record.get("artifacts", []) if str(p).endswith(".png")]
        print(format_summary(load("replication_summary"), load("complexity_correlations"), plots), flush=True)

    @hook_impl
    def on_node_error(self, error, node):
        self.record["failed_node"] = node.name

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog):
        """A failed run still leaves its manifest: status ``failed``, the error and the node it failed in
        (kedro-mlflow then ends the run as ``FAILED``)."""
        self.record["error"] = f"{type(error).__name__}: {error}"
        try:
            self._write_manifest(catalog)
        except Exception as manifest_error:  # noqa: BLE001 - never hide the run's own error behind this one
            logger.error("the failed run's manifest could not be written: %s", manifest_error)
        self._finish()

    def _write_manifest(self, catalog) -> None:
        """Save the run record as the versioned ``run_manifest`` dataset (when the catalog declares it; an
        ``MlflowArtifactDataset``, so it is also the run's ``run_manifest.json`` artifact)."""
        manifest = build_manifest(self.record)
        self.manifest = manifest
        if MANIFEST_DATASET in catalog:
            ds = catalog.get(MANIFEST_DATASET)
            if is_mlflow_dataset(ds):
                ds._logging_activated = self._active
            catalog.save(MANIFEST_DATASET, manifest)
            self.record.setdefault("datasets_saved", {})[MANIFEST_DATASET] = dataset_version(ds, "save")

    def _finish(self) -> None:
        """The version of every dataset loaded and saved, as tags and ``dataset_versions.json``."""
        if not self._active:
            return
        import mlflow

        loaded = self.record.get("datasets_loaded", {})
        saved = self.record.get("datasets_saved", {})
        mlflow.set_tags({f"dataset.{kind}.{name}"[:250]: version
                         for kind, versions in (("loaded", loaded), ("saved", saved))
                         for name, version in versions.items() if version})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dataset_versions.json"
            path.write_text(json.dumps({"loaded": loaded, "saved": saved}, indent=2, sort_keys=True))
            mlflow.log_artifact(str(path))
        self._active = False

    # -- distributed runs (copying_study.runner.DaskRunner) ----------------------------------------------
    #: what a worker's record of one group brings back to the driver's record
    REMOTE_KEYS = ("datasets_loaded", "datasets_saved", "artifacts", "weights", "measurement", "failed_node",
                   "threads")

    def remote_state(self) -> dict[str, Any]:
        """On the driver: whether the workers log into an MLflow run (``ProjectMlflowHook`` resumes it there)."""
        return {"active": self._active, "conf_catalog": self._conf_catalog, "project_path": str(self._project_path)}

    def start_remote(self, catalog, state: dict[str, Any] | None, group: str) -> None:
        """On a worker, before a group's first node: record into a fresh record (``settings.HOOKS`` puts this hook
        before ``ProjectMlflowHook``, so the run is open by the group's first node)."""
        self._catalog = catalog
        self.record = {"datasets_loaded": {}, "datasets_saved": {}, "artifacts": []}
        state = state or {}
        self._active = bool(state.get("active"))
        self._conf_catalog = dict(state.get("conf_catalog") or {})
        self._project_path = Path(state.get("project_path") or ".")

    def finish_remote(self, failed: bool) -> dict[str, Any]:
        """On a worker, after a group: return the group's record."""
        record, self.record, self._catalog, self._active = self.record, {}, None, False
        record["threads"] = current_threads()  # what the group's float sums were split over (utils/threads.py)
        return {key: record[key] for key in self.REMOTE_KEYS if key in record}

    def merge_remote(self, group: str, record: dict[str, Any]) -> None:
        """On the driver: a finished group's record joins the run's (and so the run manifest)."""
        for name, version in (record.get("datasets_loaded") or {}).items():
            self.record.setdefault("datasets_loaded", {}).setdefault(name, version)
        self.record.setdefault("datasets_saved", {}).update(record.get("datasets_saved") or {})
        self.record.setdefault("artifacts", []).extend(record.get("artifacts") or [])
        if record.get("weights"):
            self.record.setdefault("weights", {}).update(record["weights"])
        if record.get("threads"):
            threads = self.record.setdefault("threads", [])
            if record["threads"] not in threads:
                threads.append(record["threads"])
        measurement = record.get("measurement") or {}
        if measurement:
            mine = self.record.setdefault("measurement", {})
            if "descriptor_calibration" in measurement:
                mine["descriptor_calibration"] = measurement["descriptor_calibration"]
            if "controls" in measurement:
                mine.setdefault("controls", {}).update(measurement["controls"])

    def remote_failed(self, groups: list[str]) -> None:
        """On the driver: the groups that failed for good, for the run manifest."""
        self.record["failed_groups"] = list(groups)

    # -- datasets ---------------------------------------------------------------------------------------
    def _dataset(self, name: str):
        if self._catalog is None:
            return None
        try:
            return self._catalog.get(name)
        except Exception:  # noqa: BLE001
            return None

    def _collect_weights(self, dataset_name: str, data: Any, ds: Any) -> None:
        """Checksums of model weights: saved model folders, and what outputs report (``checksums`` / meta.weights)."""
        weights = self.record.setdefault("weights", {})
        if type(ds).__name__ == "DiffusersPipelineDataset":
            path = self._saved_path(dataset_name)
            if path is not None and path.is_dir():
                weights[dataset_name] = folder_checksum(path)["sha256"]
        if isinstance(data, dict):
            if isinstance(data.get("checksums"), dict):
                weights.update({f"{dataset_name}.{k}": v for k, v in data["checksums"].items()})
            meta = data.get("meta")
            if isinstance(meta, dict) and meta.get("weights"):
                weights[f"{dataset_name}.descriptor"] = meta["weights"]

    def _collect_measurement(self, dataset_name: str, data: Any) -> None:
        """The descriptor calibration and the controls' verdicts go into the manifest."""
        if not isinstance(data, dict):
            return
        leaf = dataset_name.split(".")[-1]
        if leaf == "descriptor_calibration" and "copy_threshold" in data:
            self.record.setdefault("measurement", {})["descriptor_calibration"] = {
                "descriptor": (data.get("descriptor") or {}).get("name"),
                "whitening_sha256": ((data.get("descriptor") or {}).get("whitening") or {}).get("sha256"),
                "copy_threshold": data["copy_threshold"], "threshold_rule": data.get("threshold_rule"),
                "meets_targets": data.get("meets_targets"),
                "families": {f: {"false_positive_rate": r["false_positive_rate"], "recall": r["recall"]}
                             for f, r in (data.get("families") or {}).items()},
            }
        if leaf == "replication_summary" and "controls" in data:
            self.record.setdefault("measurement", {}).setdefault("controls", {})[dataset_name] = {
                "status": data["controls"]["status"], "failures": data["controls"]["failures"],
                "negative_copy_rate": data["controls"]["negative"]["copy_rate"],
                "positive_copy_rate": data["controls"]["positive"]["copy_rate"],
                "copy_threshold": data.get("copy_threshold"),
            }

    @hook_impl
    def after_dataset_loaded(self, dataset_name, data, node):
        ds = self._dataset(dataset_name)
        if ds is not None and dataset_name not in self.record.setdefault("datasets_loaded", {}):
            self.record["datasets_loaded"][dataset_name] = dataset_version(ds, "load")

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node):
        ds = self._dataset(dataset_name)
        if ds is not None:
            self.record.setdefault("datasets_saved", {})[dataset_name] = dataset_version(ds, "save")
        self._collect_weights(dataset_name, data, ds)
        self._collect_measurement(dataset_name, data)
        meta = (getattr(ds, "metadata", None) or {}).get("copying_study", {}) if ds is not None else {}
        artifact = is_mlflow_dataset(ds) or meta.get("mlflow_artifact_folder")
        if artifact and ds is not None and not dataset_name.endswith("_mlflow"):
            path = self._saved_path(dataset_name)
            if path is not None and path.exists():
                self.record.setdefault("artifacts", []).append(str(path))
        if not self._active:
            return
        import mlflow

        if dataset_name.split(".")[-1] == "replication_summary" and isinstance(data, dict) and "controls" in data:
            # a failing control is visible on the run's page, not only in a file
            prefix = dataset_name.rsplit(".", 1)[0] + "." if "." in dataset_name else ""
            mlflow.set_tags({f"{prefix}controls": data["controls"]["status"],
                             f"{prefix}copy_threshold": str(data.get("copy_threshold")),
                             f"{prefix}descriptor": str((data.get("descriptor") or {}).get("name"))})
        if type(ds).__name__ == "DiffusersPipelineDataset":
            # the saved model's folder and checksum on the run's page (the weights stay in the catalog's folder)
            path = self._saved_path(dataset_name)
            if path is not None and path.is_dir():
                mlflow.set_tags({f"{dataset_name}.path": str(path.resolve()),
                                 f"{dataset_name}.sha256": str(self.record["weights"].get(dataset_name))})
        if meta.get("mlflow_artifact_folder"):
            # a folder of files (kedro-mlflow's MlflowArtifactDataset logs one file)
            path = self._saved_path(dataset_name)
            if path is not None and path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=f"{dataset_name.split('.')[0]}/{path.name}")
