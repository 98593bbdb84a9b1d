"""MLflow tracking for every ``kedro run``: one MLflow run per Kedro run.

Logged: the parameters the pipeline uses (flattened, ``ingest.resolution``), tags with the git commit and whether
the tree was dirty, the Kedro run id (= the save version of every versioned dataset), environment and pipeline
names, the version of every dataset loaded and saved, metrics from node outputs named ``*_metrics`` (a dict of
floats, or of ``[[step, value], ...]`` histories), and every file saved to a dataset whose metadata says
``copying_study: {mlflow_artifact: true}`` (plots, galleries, records). The same information is kept in
``self.record`` for the run manifest.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project>/mlflow.db`` with artifacts in
``<project>/mlruns`` — works on a fresh clone with no set-up. ``COPYING_STUDY_MLFLOW=0`` turns tracking off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from copying_study.manifest import build_manifest, folder_checksum
from copying_study.run_versions import pin_run_versions
from copying_study.utils.threads import current_threads

logger = logging.getLogger(__name__)

EXPERIMENT_ENV = "COPYING_STUDY_EXPERIMENT"
DEFAULT_EXPERIMENT = "copying_study"
SYSTEM_METRICS_ENV = "COPYING_STUDY_SYSTEM_METRICS"  # auto (runs that finetune) | 1 (every run) | 0 (never)


def system_metrics_wanted(pipeline: Any) -> bool:
    """Whether the run's MLflow run records system metrics (MLflow's own ``log_system_metrics``: CPU, memory, disk,
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
MANIFEST_DATASET = "run_manifest"
RUN_ID_DATASET = "kedro_run_id"
RUN_INFO_DATASET = "run_info"  # the run's identifiers for nodes that print them (the study report)


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


def flatten(d: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    else:
        out[prefix] = d
    return out


def tracking_uri(project_path: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_path / 'mlflow.db').as_posix()}"


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


def saved_path(dataset: Any) -> Path | None:
    """Where a file dataset wrote its data (the versioned path for versioned datasets)."""
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None:
        return None
    version = dataset_version(dataset, "save")
    if version and hasattr(dataset, "_get_versioned_path"):
        return Path(str(dataset._get_versioned_path(version)))
    return Path(str(filepath))


def metrics_to_log(value: Any) -> dict[str, list[tuple[int, float]]]:
    """Normalise a ``*_metrics`` output into ``{name: [(step, value), ...]}`` with finite floats only."""
    out: dict[str, list[tuple[int, float]]] = {}
    for key, v in flatten(value).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            if math.isfinite(float(v)):
                out[key] = [(0, float(v))]
        elif isinstance(v, (list, tuple)) and v and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
            out[key] = [(int(s), float(x)) for s, x in v if x is not None and math.isfinite(float(x))]
    return out


def ensure_experiment(name: str, artifact_root: str | None, attempts: int = 6) -> None:
    """Create (if needed) and select the MLflow experiment ``name``. Two runs started together on a fresh clone race
    to create it (and the sqlite store's tables): the loser's unique-constraint or locked-database error is retried
    after a short wait, when the winner's experiment is there to use."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            if mlflow.get_experiment_by_name(name) is None:
                mlflow.create_experiment(name, artifact_location=artifact_root)
            mlflow.set_experiment(name)
            return
        except (MlflowException, SQLAlchemyError) as error:
            if attempt == attempts - 1:
                raise
            logger.info("MLflow experiment %r is being created by another run (%s); retrying", name,
                        str(error).splitlines()[0][:200])
            time.sleep(0.2 * 2**attempt)


class MlflowTrackingHooks:
    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self._catalog = None
        self._active = False

    # -- catalog ---------------------------------------------------------------------------------------
    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions):
        self._catalog = catalog
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
    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog):
        self._catalog = catalog
        project_path = Path(run_params.get("project_path") or ".")
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
        if os.environ.get("COPYING_STUDY_MLFLOW", "1").lower() in ("0", "false", "off", "no"):
            logger.info("MLflow tracking is off (COPYING_STUDY_MLFLOW=0)")
            catalog.save(RUN_INFO_DATASET, self._run_info())
            return
        import mlflow

        uri = tracking_uri(project_path)
        mlflow.set_tracking_uri(uri)
        name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
        artifact_root = None
        if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI"):
            artifact_root = (project_path / "mlruns").resolve().as_uri()
        ensure_experiment(name, artifact_root)
        system = system_metrics_wanted(pipeline)
        if mlflow.active_run() is not None:  # a caller (e.g. the study's parent run) opened one: nest
            mlflow.start_run(run_name=f"{'+'.join(pipelines)}:{run_params['run_id']}", nested=True,
                             log_system_metrics=system)
        else:
            mlflow.start_run(run_name=f"{'+'.join(pipelines)}:{run_params['run_id']}", log_system_metrics=system)
        self._active = True
        self.record["mlflow_run_id"] = mlflow.active_run().info.run_id
        catalog.save(RUN_INFO_DATASET, self._run_info())
        tags = {
            "kedro.run_id": run_params["run_id"],
            "kedro.env": str(run_params.get("env")),
            "kedro.pipelines": ",".join(pipelines),
            "kedro.version": str(run_params.get("kedro_version")),
            "git.commit": str(git["commit"]),
            "git.dirty": str(git["dirty"]),
            "mlflow.source.git.commit": str(git["commit"]),
            "kedro.load_versions": json.dumps(run_params.get("load_versions") or {}),
            "kedro.runtime_params": json.dumps(run_params.get("runtime_params") or {}, default=str),
        }
        mlflow.set_tags(tags)
        params = self.record.get("parameters") or {}
        used = set()
        for name_ in pipeline.inputs() | {i for n in pipeline.nodes for i in n.inputs}:
            if name_ == "parameters":
                used.update(params)
            elif name_.startswith("params:"):
                used.add(name_[len("params:"):].split(".")[0])
        flat = {}
        for key in sorted(used):
            if key in params:
                flat.update(flatten(params[key], key))
        mlflow.log_params({key[:250]: (json.dumps(value, default=str) if not isinstance(value, str) else value)[:6000]
                           for key, value in flat.items()})  # one batched call (MLflow splits it at its limits)

    def _run_info(self) -> dict[str, Any]:
        """The run's identifiers (Kedro run id, environment, git commit and dirty flag, MLflow run id)."""
        git = self.record.get("git") or {}
        info = {"kedro run id": self.record.get("run_id"), "kedro env": self.record.get("env"),
                "git commit": git.get("commit"), "git dirty": git.get("dirty"),
                "mlflow run id": self.record.get("mlflow_run_id")}
        return {k: v for k, v in info.items() if v is not None}

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog):
        self._write_manifest(catalog)
        self._print_summary(catalog)
        self._finish("FINISHED")

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

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog):
        """A failed run still leaves its manifest: status ``failed``, the error and the node it failed in."""
        self.record["error"] = f"{type(error).__name__}: {error}"
        try:
            self._write_manifest(catalog)
        except Exception as manifest_error:  # noqa: BLE001 - never hide the run's own error behind this one
            logger.error("the failed run's manifest could not be written: %s", manifest_error)
        self._finish("FAILED")

    def _write_manifest(self, catalog) -> None:
        """Save the run record as the versioned ``run_manifest`` dataset (when the catalog declares it)."""
        manifest = build_manifest(self.record)
        self.manifest = manifest
        if MANIFEST_DATASET in catalog:
            catalog.save(MANIFEST_DATASET, manifest)
            ds = catalog.get(MANIFEST_DATASET)
            self.record.setdefault("datasets_saved", {})[MANIFEST_DATASET] = dataset_version(ds, "save")
            if self._active:
                import mlflow

                path = saved_path(ds)
                if path is not None and path.exists():
                    mlflow.log_artifact(str(path))

    def _finish(self, status: str) -> None:
        if not self._active:
            return
        import mlflow

        try:
            loaded = self.record.get("datasets_loaded", {})
            saved = self.record.get("datasets_saved", {})
            for kind, versions in (("loaded", loaded), ("saved", saved)):
                for ds_name, version in versions.items():
                    if version:
                        mlflow.set_tag(f"dataset.{kind}.{ds_name}", version)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "dataset_versions.json"
                path.write_text(json.dumps({"loaded": loaded, "saved": saved}, indent=2, sort_keys=True))
                mlflow.log_artifact(str(path))
        finally:
            mlflow.end_run(status=status)
            self._active = False

    # -- distributed runs (copying_study.runner.DaskRunner) ----------------------------------------------
    #: what a worker's record of one group brings back to the driver's record
    REMOTE_KEYS = ("datasets_loaded", "datasets_saved", "artifacts", "weights", "measurement", "failed_node",
                   "threads")

    def remote_state(self) -> dict[str, Any]:
        """On the driver: what a worker needs to log into this run's MLflow run (nothing when tracking is off)."""
        if not self._active:
            return {}
        import mlflow

        return {"mlflow_run_id": self.record.get("mlflow_run_id"), "tracking_uri": mlflow.get_tracking_uri()}

    def start_remote(self, catalog, state: dict[str, Any] | None, group: str) -> None:
        """On a worker, before a group's first node: record into a fresh record, log into the run's MLflow run
        (resumed in this process; the study's cells open their child runs under it, as in a sequential run)."""
        self._catalog = catalog
        self.record = {"datasets_loaded": {}, "datasets_saved": {}, "artifacts": []}
        self._active = False
        if state and state.get("mlflow_run_id"):
            import mlflow

            mlflow.set_tracking_uri(state["tracking_uri"])
            mlflow.start_run(run_id=state["mlflow_run_id"])
            self._active = True

    def finish_remote(self, failed: bool) -> dict[str, Any]:
        """On a worker, after a group: leave the MLflow run open for the driver to end, return the group's record."""
        if self._active:
            import mlflow

            mlflow.end_run(status="RUNNING")  # this process lets go of the run; the driver ends it
            self._active = False
        record, self.record, self._catalog = self.record, {}, None
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
            path = saved_path(ds)
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
        if not self._active:
            return
        import mlflow

        if dataset_name.split(".")[-1].endswith("_metrics") and isinstance(data, dict):
            # a namespaced output (a study cell, ``cell.finetune_metrics``) logs ``cell.<metric>``
            prefix = dataset_name.rsplit(".", 1)[0] + "." if "." in dataset_name else ""
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(f"{prefix}{key}"[:250], value, now, step)
                     for key, history in metrics_to_log(data).items() for step, value in history]
            if batch:  # one batched call per metrics dataset (MLflow splits it at its limits)
                mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=batch, synchronous=True)
        if dataset_name.split(".")[-1] == "replication_summary" and isinstance(data, dict) and "controls" in data:
            # a failing control is visible on the run's page, not only in a file
            prefix = dataset_name.rsplit(".", 1)[0] + "." if "." in dataset_name else ""
            mlflow.set_tags({f"{prefix}controls": data["controls"]["status"],
                             f"{prefix}copy_threshold": str(data.get("copy_threshold")),
                             f"{prefix}descriptor": str((data.get("descriptor") or {}).get("name"))})
        if type(ds).__name__ == "DiffusersPipelineDataset":
            # the saved model's folder and checksum on the run's page (the weights stay in the catalog's folder)
            path = saved_path(ds)
            if path is not None and path.is_dir():
                mlflow.set_tags({f"{dataset_name}.path": str(path.resolve()),
                                 f"{dataset_name}.sha256": str(self.record["weights"].get(dataset_name))})
        meta = (getattr(ds, "metadata", None) or {}).get("copying_study", {}) if ds is not None else {}
        if meta.get("mlflow_artifact"):
            path = saved_path(ds)
            if path is not None and path.exists():
                artifact_dir = meta.get("artifact_path", dataset_name.split(".")[0])
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=f"{artifact_dir}/{path.name}")
                else:
                    mlflow.log_artifact(str(path), artifact_path=artifact_dir)
                self.record.setdefault("artifacts", []).append(str(path))
