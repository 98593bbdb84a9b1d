"""``copying-study audit RUN_ID``: re-run a recorded study and check that it reproduces.

1. Reads the run's manifest (``run_manifest.json``) from MLflow. RUN_ID is an MLflow run id or a Kedro run id.
2. Checks the code (git commit) and that every recorded input version still exists; either problem stops the audit
   with a clear message unless ``--go-on`` is given.
3. Re-runs the recorded pipelines with the recorded environment and parameters, loading the recorded input versions.
   Outputs go to a new version: nothing recorded is overwritten.
4. Compares every saved output (tables, JSON, descriptors, model folders, images) and every MLflow metric with the
   recorded ones, prints a table and exits 0 when everything matches, 1 otherwise (2 when the audit could not run).
   On CPU the match must be exact; when either run used CUDA, numbers may differ by ``audit.gpu_tolerance``
   (a parameter; printed). Timing fields (seconds, samples/s, ...) are reported as skipped, never compared.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Keys that describe how a run went, not what it computed: timings, ids, paths, resuming (exact either way), whether
# the base model was built by this run, and MLflow's system metrics (CPU/GPU load, memory).
VOLATILE = re.compile(r"(seconds|_per_s$|per_second|duration|elapsed|timestamp|wall|_time$|^time$|run_id|"
                      r"mlflow|version|path|^folder$|created|date|host|^resume$|resumed_from|^built_now$|^system/)", re.IGNORECASE)


#: an MLflow run id (32 hex digits), which a study report or a cell's row names
MLFLOW_ID = re.compile(r"\b[0-9a-f]{32}\b")


@dataclass
class Check:
    item: str
    status: str  # match | DIFFERS | skipped | MISSING
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("match", "skipped")


# --------------------------------------------------------------------------------------------- comparison
def _close(a: float, b: float, tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b if tol == 0 else abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def same_up_to_versions(a: str, b: str, versions: tuple[str, str] | None) -> bool:
    """Strings equal once the recorded and the re-run's version (run id) are replaced by one placeholder: paths of
    versioned datasets name their version."""
    if a == b:
        return True
    if not versions or not all(versions):
        return False
    return a.replace(versions[0], "<version>") == b.replace(versions[1], "<version>")


def compare_json(a: Any, b: Any, tol: float, path: str = "", versions: tuple[str, str] | None = None) -> list[str]:
    """Differences between two JSON-like values (volatile keys are ignored; see ``same_up_to_versions``)."""
    diffs: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if VOLATILE.search(str(k)):
                continue
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                diffs.append(f"{sub}: only in {'rerun' if k in b else 'record'}")
            else:
                diffs += compare_json(a[k], b[k], tol, sub, versions)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{path}: length {len(a)} vs {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                diffs += compare_json(x, y, tol, f"{path}[{i}]", versions)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not _close(float(a), float(b), tol):
            diffs.append(f"{path}: {a} vs {b}")
    elif isinstance(a, str) and isinstance(b, str) and same_up_to_versions(a, b, versions):
        pass
    elif a != b:
        diffs.append(f"{path}: {str(a)[:60]!r} vs {str(b)[:60]!r}")
    return diffs


def compare_frames(a, b, tol: float, versions: tuple[str, str] | None = None) -> list[str]:
    import pandas as pd

    diffs = []
    if list(a.columns) != list(b.columns):
        return [f"columns {list(a.columns)} vs {list(b.columns)}"]
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)} rows"]
    for col in a.columns:
        if VOLATILE.search(str(col)):
            continue
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            xa, ya = x.to_numpy(float), y.to_numpy(float)
            same = np.allclose(xa, ya, rtol=tol, atol=tol, equal_nan=True) if tol else np.array_equal(
                xa, ya, equal_nan=True)
            if not same:
                bad = int(np.sum(~np.isclose(xa, ya, rtol=tol, atol=tol, equal_nan=True)))
                diffs.append(f"column {col}: {bad} rows differ")
        else:
            bad = [i for i, (u, v) in enumerate(zip(x, y, strict=True)) if compare_json(_plain(u), _plain(v), tol, "", versions)]
            if bad:
                diffs.append(f"column {col}: {len(bad)} rows differ (first row {bad[0]})")
    return diffs


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def compare_images(a: bytes, b: bytes, tol: float) -> list[str]:
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return [f"image size {x.shape} vs {y.shape}"]
    worst = int(np.abs(x - y).max())
    return [] if worst <= (0 if tol == 0 else 255 * tol * 10) else [f"pixels differ by up to {worst}"]


def compare_paths(a: Path, b: Path, tol: float, versions: tuple[str, str] | None = None) -> list[str]:
    """Compare two saved versions of a dataset on disk, by file type."""
    if a.is_dir() or b.is_dir():
        fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
        fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
        if fa != fb:
            return [f"files differ: {sorted(fa ^ fb)[:5]}"]
        diffs = []
        for rel in sorted(fa):
            diffs += [f"{rel}: {d}" for d in compare_paths(a / rel, b / rel, tol, versions)]
        return diffs
    suffix = a.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        return compare_frames(pd.read_parquet(a), pd.read_parquet(b), tol, versions)
    if suffix == ".json":
        return compare_json(json.loads(a.read_text()), json.loads(b.read_text()), tol, "", versions)
    if suffix == ".npz":
        with np.load(a) as za, np.load(b) as zb:
            diffs = []
            for key in sorted(set(za.files) | set(zb.files)):
                if key not in za.files or key not in zb.files:
                    diffs.append(f"{key}: missing")
                    continue
                x, y = za[key], zb[key]
                if x.dtype.kind == "f":
                    ok = x.shape == y.shape and (np.array_equal(x, y) if tol == 0 else np.allclose(x, y, atol=tol))
                else:
                    ok = x.shape == y.shape and np.array_equal(x, y)
                if not ok:
                    diffs.append(f"{key} differs")
            return diffs
    if suffix == ".safetensors" and tol:
        from safetensors.numpy import load_file

        x, y = load_file(str(a)), load_file(str(b))
        return [k for k in x if k not in y or not np.allclose(x[k], y[k], atol=tol)]
    if suffix == ".png":
        return compare_images(a.read_bytes(), b.read_bytes(), tol)
    if suffix == ".pkl":  # a pickled hand-off (a study cell's row and copies): compared as values
        import pickle

        import pandas as pd

        x, y = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())  # the project's own outputs
        if isinstance(x, pd.DataFrame) and isinstance(y, pd.DataFrame):
            return compare_frames(x, y, tol, versions)
        return compare_json(_plain_deep(x), _plain_deep(y), tol, "", versions)
    if suffix in (".html", ".txt", ".md", ".csv"):  # text naming its run: equal once the run's ids are masked
        x, y = (MLFLOW_ID.sub("<mlflow-run>", p.read_text()) for p in (a, b))
        return [] if same_up_to_versions(x, y, versions) else ["text differs"]
    return [] if a.read_bytes() == b.read_bytes() else ["bytes differ"]


def _plain_deep(v: Any) -> Any:
    """A pickled value as JSON-like values for :func:`compare_json` (frames as lists of records)."""
    import pandas as pd

    if isinstance(v, dict):
        return {k: _plain_deep(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain_deep(x) for x in v]
    if isinstance(v, pd.DataFrame):
        return [_plain_deep(r) for r in v.to_dict("records")]
    return _plain(v)


# --------------------------------------------------------------------------------------------- the audit
def _find_run(client, run_id: str):
    try:
        return client.get_run(run_id)
    except Exception:  # noqa: BLE001 - not an MLflow run id: try a Kedro run id
        pass
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`kedro.run_id` = '{run_id}'")
        if runs:
            return runs[0]
    return None


def load_manifest(run_id: str, project: Path) -> tuple[dict, Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    from copying_study.hooks import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(project))
    client = MlflowClient()
    run = _find_run(client, run_id)
    if run is None:
        raise LookupError(f"no MLflow run '{run_id}' (as MLflow or Kedro run id) at {tracking_uri(project)}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, "run_manifest.json", tmp)
        except Exception as exc:  # noqa: BLE001
            raise LookupError(f"run {run.info.run_id} has no run_manifest.json artifact: {exc}") from exc
        return json.loads(Path(local).read_text()), run


def _versioned_path(catalog, name: str, version: str) -> Path | None:
    from kedro.io.core import Version

    ds = catalog.get(name, version=Version(version, None))
    if ds is None or not hasattr(ds, "_get_versioned_path"):
        return None
    return Path(str(ds._get_versioned_path(version)))


def run_audit(run_id: str, project: Path, go_on: bool = False, tolerance: float | None = None,
              out=sys.stdout) -> int:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from copying_study.hooks import git_state

    project = project.resolve()
    try:
        manifest, run = load_manifest(run_id, project)
    except LookupError as exc:
        print(f"audit: {exc}", file=out)
        return 2
    bootstrap_project(project)
    problems: list[str] = []
    git_now = git_state(project)
    rec_git = manifest.get("git") or {}
    if rec_git.get("commit") != git_now.get("commit"):
        problems.append(f"code differs: recorded commit {rec_git.get('commit')}, checkout is {git_now.get('commit')}")
    if rec_git.get("dirty"):
        print("audit: note: the recorded run was made from a dirty tree", file=out)
    if git_now.get("dirty"):
        print("audit: note: this checkout has uncommitted changes", file=out)

    saved = {k: v for k, v in (manifest.get("datasets_saved") or {}).items() if v and k != "run_manifest"}
    inputs = {k: v for k, v in (manifest.get("datasets_loaded") or {}).items() if v and k not in saved}
    with KedroSession.create(project_path=project, env=manifest.get("env")) as probe:
        catalog = probe.load_context().catalog
        missing = [f"{k}@{v}" for k, v in inputs.items()
                   if (p := _versioned_path(catalog, k, v)) is None or not p.exists()]
        missing_out = [f"{k}@{v}" for k, v in saved.items()
                       if (p := _versioned_path(catalog, k, v)) is None or not p.exists()]
    if missing:
        problems.append(f"recorded input versions missing: {', '.join(missing)}")
    if missing_out:
        problems.append(f"recorded output versions missing (cannot compare them): {', '.join(missing_out)}")
    for p in problems:
        print(f"audit: {p}", file=out)
    if problems and not go_on:
        print("audit: stopped (use --go-on to re-run anyway)", file=out)
        return 2

    params = manifest.get("parameters") or {}
    recorded_cuda = bool((manifest.get("device") or {}).get("cuda_available"))
    from copying_study.manifest import device_info

    if tolerance is None:
        gpu = recorded_cuda or bool(device_info().get("cuda_available"))
        tolerance = float((params.get("audit") or {}).get("gpu_tolerance", 1e-3)) if gpu else 0.0
    print(f"audit: re-running {manifest.get('pipeline_names')} (env {manifest.get('env')}) of run "
          f"{manifest.get('kedro_run_id')}; tolerance {tolerance:g}", file=out)

    # An audit re-computes everything: never resume training from checkpoints the recorded run left behind
    # (resuming is exact, but it would reuse the recorded run's state instead of re-deriving it).
    params = json.loads(json.dumps(params))
    if isinstance(params.get("finetune"), dict) and params["finetune"].get("resume"):
        params["finetune"]["resume"] = False
        print("audit: finetune.resume set to false: training is redone from the base model", file=out)
    if isinstance(params.get("finetune"), dict) and params["finetune"].get("resume_from"):
        params["finetune"]["resume_from"] = None
        print("audit: finetune.resume_from set to null: training is redone from the base model", file=out)
    load_versions = {k: v for k, v in inputs.items() if f"{k}@{v}" not in missing}
    # CPU results depend on torch's and BLAS's thread counts (float sums split differently): re-run at the recorded
    # ones (a distributed run records its workers' counts, 1 under Dask's nanny)
    from copying_study.utils.threads import current_threads, limit_threads

    device, now = manifest.get("device") or {}, current_threads()
    recorded = {lib: device.get(f"{lib}_threads") for lib in ("torch", "blas")}
    recorded = {lib: n for lib, n in recorded.items() if isinstance(n, int) and n != now.get(lib)}
    for lib, n in recorded.items():
        print(f"audit: {lib} threads set to the recorded run's {n} (this process has {now.get(lib)})", file=out)
    with limit_threads(recorded.get("torch"), recorded.get("blas")):
        with KedroSession.create(project_path=project, env=manifest.get("env"), runtime_params=params) as session:
            session.run(pipeline_names=manifest.get("pipeline_names"), load_versions=load_versions)
            from copying_study.settings import HOOKS

            new_record = HOOKS[0].record  # (the probe's catalog above resolves any version's path)

    checks: list[Check] = []
    new_saved = new_record.get("datasets_saved") or {}
    for name, version in sorted(saved.items()):
        new_version = new_saved.get(name)
        if new_version is None:
            checks.append(Check(name, "MISSING", "not written by the re-run"))
            continue
        old_p, new_p = _versioned_path(catalog, name, version), _versioned_path(catalog, name, new_version)
        if old_p is None or not old_p.exists():
            checks.append(Check(name, "MISSING", f"recorded version {version} not on disk"))
            continue
        diffs = compare_paths(old_p, new_p, tolerance, (version, new_version))
        checks.append(Check(name, "DIFFERS" if diffs else "match", "; ".join(diffs[:3])))

    checks += compare_mlflow_metrics(run, new_record.get("mlflow_run_id"), tolerance)
    print_table(checks, out)
    ok = all(c.ok for c in checks)
    print(f"audit: {'ALL MATCH' if ok else 'MISMATCH'} ({sum(c.status == 'match' for c in checks)} matched, "
          f"{sum(not c.ok for c in checks)} differ, {sum(c.status == 'skipped' for c in checks)} skipped)", file=out)
    return 0 if ok else 1


def compare_mlflow_metrics(run, new_run_id: str | None, tol: float) -> list[Check]:
    from mlflow.tracking import MlflowClient

    if not new_run_id:
        return [Check("mlflow metrics", "MISSING", "the re-run logged no MLflow run")]
    new = MlflowClient().get_run(new_run_id).data.metrics
    out = []
    for key, value in sorted(run.data.metrics.items()):
        if VOLATILE.search(key):
            out.append(Check(f"metric {key}", "skipped", "timing"))
        elif key not in new:
            out.append(Check(f"metric {key}", "MISSING", "not logged by the re-run"))
        else:
            same = _close(float(value), float(new[key]), tol)
            out.append(Check(f"metric {key}", "match" if same else "DIFFERS", f"{value:.6g} vs {new[key]:.6g}"))
    return out


def print_table(checks: list[Check], out) -> None:
    width = max([len(c.item) for c in checks] + [4])
    print(f"{'item':<{width}}  {'result':<8}  detail", file=out)
    print(f"{'-' * width}  {'-' * 8}  {'-' * 40}", file=out)
    for c in checks:
        print(f"{c.item:<{width}}  {c.status:<8}  {c.detail}", file=out)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="copying-study audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", help="MLflow run id (or Kedro run id) of the recorded run")
    parser.add_argument("--project", default=".", help="project folder (default: current directory)")
    parser.add_argument("--go-on", action="store_true", help="re-run even if the commit or input versions differ")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative tolerance for numbers (default: 0 on CPU, audit.gpu_tolerance on GPU)")
    args = parser.parse_args(argv)
    code = run_audit(args.run_id, Path(args.project), go_on=args.go_on, tolerance=args.tolerance)
    sys.exit(code)
