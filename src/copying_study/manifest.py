"""The run record ("manifest") every ``kedro run`` writes: enough to re-run the study exactly.

It holds the git commit and whether the tree was dirty, the resolved parameters and their hash, the Kedro
environment and pipelines, the versions of every dataset loaded and saved (and of each input, fixed when the run
started: ``inputs_at_start``), checksums of model weights used, package
versions, the device, and every seed found in the parameters. ``copying-study audit`` reads it back (see
``copying_study.audit``).
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from copying_study.utils.threads import current_threads

MANIFEST_FORMAT = 1
PACKAGES = (
    "copying_study", "kedro", "kedro-datasets", "mlflow", "torch", "diffusers", "transformers", "accelerate",
    "faiss-cpu", "faiss-gpu", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "pillow", "torchmetrics",
    "safetensors", "tokenizers",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine()}
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    threads = current_threads()
    info.update({f"{lib}_threads": n for lib, n in threads.items()})
    return info


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def find_seeds(params: Any, prefix: str = "") -> dict[str, Any]:
    """Every parameter whose key names a seed (``seed``, ``seeds``, ``*_seed``), by dotted path."""
    found: dict[str, Any] = {}
    if isinstance(params, dict):
        for k, v in params.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if str(k) == "seed" or str(k).endswith("_seed") or str(k) == "seeds":
                found[path] = v
            found.update(find_seeds(v, path))
    return found


def folder_checksum(path: Path) -> dict[str, Any]:
    """sha256 of every file in a folder (sorted), plus one digest over all of them."""
    files = {}
    total = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        rel = f.relative_to(path).as_posix()
        files[rel] = h.hexdigest()
        total.update(f"{rel}:{files[rel]}".encode())
    return {"sha256": total.hexdigest(), "files": files}


def compute_threads(record: dict[str, Any]) -> dict[str, Any]:
    """``torch_threads`` / ``blas_threads`` the nodes computed with when they ran in other processes (a
    distributed run: the workers' counts, a list where workers differed); empty for a run in this process
    (``device_info`` has its counts)."""
    seen = record.get("threads") or []
    out: dict[str, Any] = {}
    for lib in ("torch", "blas"):
        counts = sorted({t[lib] for t in seen if lib in t})
        if counts:
            out[f"{lib}_threads"] = counts[0] if len(counts) == 1 else counts
    return out


def build_manifest(record: dict[str, Any]) -> dict[str, Any]:
    params = record.get("parameters") or {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "kedro_run_id": record.get("run_id"),
        "mlflow_run_id": record.get("mlflow_run_id"),
        "env": record.get("env"),
        "pipeline_names": record.get("pipeline_names"),
        "runtime_params": record.get("runtime_params") or {},
        "git": record.get("git") or {},
        "parameters": params,
        "parameters_sha256": params_hash(params),
        "seeds": find_seeds(params),
        "inputs_at_start": record.get("inputs_at_start") or {},
        "datasets_loaded": record.get("datasets_loaded") or {},
        "datasets_saved": record.get("datasets_saved") or {},
        "weights": record.get("weights") or {},
        "measurement": record.get("measurement") or {},
        "packages": package_versions(),
        "device": {**device_info(), **compute_threads(record)},
        "status": "failed" if record.get("error") else "finished",
        "error": record.get("error"),
        "failed_node": record.get("failed_node"),
        "runner": record.get("runner"),
        "failed_groups": record.get("failed_groups"),
    }
    return json.loads(json.dumps(manifest, default=str))  # plain JSON types only
