"""Versioned store for image descriptors: float32 [N, d] + the ids of the rows + the descriptor's metadata.

Data is a dict ``{"embeddings": np.ndarray[N, d] float32, "image_ids": list[str], "meta": dict}``; ``meta`` holds at
least ``name``, ``dim`` and ``preprocessing``. An optional ``row_info`` dict holds arrays of length N that the
descriptor reports per row (``Descriptor.encode_rows``: PDQ's ``quality`` and ``low_quality``). Stored as one
``.npz`` (embeddings, ids, meta as JSON, each ``row_info`` array as ``row_<name>``).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version

ROW_PREFIX = "row_"  # npz key prefix of the per-row arrays (row_info)


class DescriptorsDataset(AbstractVersionedDataset[dict, dict]):
    def __init__(self, filepath: str, version: Version | None = None, metadata: dict | None = None):
        super().__init__(PurePosixPath(filepath), version)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        path = Path(str(self._get_load_path()))
        with np.load(path, allow_pickle=False) as z:
            data = {
                "embeddings": z["embeddings"].astype(np.float32, copy=False),
                "image_ids": [str(x) for x in z["image_ids"]],
                "meta": json.loads(str(z["meta"])),
            }
            row_info = {key[len(ROW_PREFIX):]: z[key] for key in z.files if key.startswith(ROW_PREFIX)}
        if row_info:
            data["row_info"] = row_info
        return data

    def save(self, data: dict[str, Any]) -> None:
        emb = np.asarray(data["embeddings"], dtype=np.float32)
        ids = np.asarray([str(x) for x in data["image_ids"]])
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise DatasetError(f"descriptors must be [N, d] with N ids; got {emb.shape} and {len(ids)} ids")
        meta = dict(data.get("meta") or {})
        meta.setdefault("dim", int(emb.shape[1]))
        rows = {f"{ROW_PREFIX}{key}": np.asarray(value) for key, value in dict(data.get("row_info") or {}).items()}
        for key, value in rows.items():
            if value.ndim != 1 or len(value) != len(ids) or value.dtype == object:
                raise DatasetError(f"row_info '{key[len(ROW_PREFIX):]}' must be a numeric array of {len(ids)} values "
                                   f"(one per row); got {value.dtype} {value.shape}")
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # np.savez would append .npz to a name without it
            np.savez(fh, embeddings=emb, image_ids=ids, meta=np.asarray(json.dumps(meta, sort_keys=True)), **rows)

    def _exists(self) -> bool:
        return Path(str(self._get_load_path())).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
