"""Builders of tiny on-disk sources for the ingest tests."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small smooth RGB image, different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack([128 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy
                                                    + rng.uniform())) for _ in range(3)], -1)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_imagefolder(root: Path, n: int = 4, fmt: str = "csv", extra: bool = True) -> list[str]:
    """``n`` JPEG/PNG images + metadata (``text`` and, with ``extra``, ``text_2`` / list captions)."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    rows = []
    for i in range(n):
        name = f"img_{i}.{'png' if i % 2 else 'jpg'}"
        photo(i).save(root / name)
        names.append(name)
        row = {"file_name": name, "text": f"caption {i}"}
        if extra:
            row["text_2"] = f"another caption {i}"
        rows.append(row)
    write_metadata(root, rows, fmt)
    return names


def write_metadata(folder: Path, rows: list[dict], fmt: str = "csv") -> None:
    if fmt == "csv":
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(folder / "metadata.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with the given (name, bytes) members, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
