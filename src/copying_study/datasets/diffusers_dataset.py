"""Versioned folder holding a diffusers pipeline written with ``save_pretrained``.

``save`` takes any object with ``save_pretrained(path)`` (a ``DiffusionPipeline``) or a folder to copy, and is
atomic: it writes into a temporary folder beside the version folder and renames it into place when complete, so a
failed or interrupted save leaves no half-written model behind (like ``ImageTableDataset``). ``load`` returns
``DiffusionPipeline.from_pretrained(path, **load_args)``, or with ``load_args: {as_path: true}`` just the folder's
path (for nodes that load the model themselves, e.g. onto a GPU in half precision).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version


class DiffusersPipelineDataset(AbstractVersionedDataset[Any, Any]):
    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        load_args: dict[str, Any] | None = None,
        metadata: dict | None = None,
    ):
        super().__init__(PurePosixPath(filepath), version)
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> Any:
        path = Path(str(self._get_load_path()))
        if not (path / "model_index.json").exists():
            raise DatasetError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        args = dict(self._load_args)
        if args.pop("as_path", False):
            return str(path)
        from diffusers import DiffusionPipeline

        import copying_study.diffusion.models  # noqa: F401  (lets diffusers resolve the tiny model's autoencoder)

        return DiffusionPipeline.from_pretrained(str(path), **args)

    def save(self, data: Any) -> None:
        path = Path(str(self._get_save_path()))
        if not isinstance(data, (str, Path)) and not hasattr(data, "save_pretrained"):
            raise DatasetError(f"cannot save {type(data).__name__}: it has no save_pretrained()")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            if isinstance(data, (str, Path)):  # a folder written elsewhere: copy it in
                shutil.copytree(str(data), partial)
            else:
                data.save_pretrained(str(partial), safe_serialization=True)
            os.rename(partial, path)  # atomic within one filesystem; fails if the version folder exists
        finally:
            if partial.exists():
                shutil.rmtree(partial)

    def _exists(self) -> bool:
        return (Path(str(self._get_load_path())) / "model_index.json").exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version, "load_args": self._load_args}
