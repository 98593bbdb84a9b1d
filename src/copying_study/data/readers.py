"""Streaming readers for real image–caption sources: ``imagefolder``, ``classfolders``, ``parquet``, ``webdataset``.

A reader checks its source when it is created (missing path, no images, missing metadata or columns: ``ValueError``
before any work) and then yields, one at a time, either a :class:`RawItem` (the original bytes, not decoded, with
captions, class label and key) or a :class:`Reject` (a metadata row naming a missing file, a duplicate file name, a
missing or empty caption, an unreadable shard, ...). Decoding and resizing happen in
:mod:`copying_study.data.ingest`. Nothing is held in memory beyond one item, the set of keys seen, and for folder
sources the list of file paths.

Keys and file names are POSIX paths relative to the source root (``ingest.path``), so ids stay stable when the
folder moves.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from copying_study.data.table import open_parquet

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LARGE_ROW_GROUP = 256 * 2**20  # bytes (uncompressed) above which a source parquet row group gets a WARNING
# "auto" extra caption columns: text_2, caption_blip, captions, texts, ... (the primary column is excluded)
AUTO_CAPTION_COLUMN = re.compile(r"^(text|caption)s?([_\-.]?[a-z0-9_]*)$", re.IGNORECASE)


@dataclass
class RawItem:
    """One undecoded image of a source, with everything the training table needs besides the pixels."""

    key: str  # unique within the source: relative path, tar sample key, parquet row key
    data: bytes
    captions: list[str]  # non-empty strings; [] only for sources without captions (classfolders, no mapping)
    class_label: str | None = None
    file_name: str | None = None


@dataclass
class Reject:
    """An item that cannot be ingested, and why (``reason`` is one of ``REJECT_REASONS``)."""

    file_name: str
    reason: str
    detail: str = ""


REJECT_REASONS = (
    "unreadable_image", "truncated_image", "unsupported_mode", "missing_caption", "empty_caption",
    "duplicate_file_name", "missing_file", "missing_image", "invalid_metadata", "invalid_file_name",
    "no_class_folder", "unreadable_shard",
)


def normalise_captions(values: Iterable[Any]) -> tuple[list[str], bool]:
    """Flatten caption values (strings, lists, JSON-list strings) into unique non-empty stripped strings.

    Returns the captions and whether any caption value was present at all (to tell missing from empty).
    """
    out: list[str] = []
    present = False
    for value in values:
        for text in _caption_strings(value):
            present = True
            text = text.strip()
            if text and text not in out:
                out.append(text)
    return out, present


def _caption_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN from pandas/csv
        return []
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, (str, bytes))):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [s for v in items for s in _caption_strings(v)]
    text = str(value)
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            return [text]
        if isinstance(parsed, list):
            return [s for v in parsed for s in _caption_strings(v)]
    return [text]


def caption_reject(file_name: str, present: bool, where: str) -> Reject:
    """The reject for an item without a usable caption (``empty_caption`` if a blank value was there)."""
    if present:
        return Reject(file_name, "empty_caption", f"every caption in {where} is blank")
    return Reject(file_name, "missing_caption", f"no caption in {where}")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root``, in sorted (deterministic) order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def relative_key(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def require_dir(path: str | os.PathLike | None, source: str) -> Path:
    """``path`` as a directory, or a ``ValueError`` naming the source."""
    if path is None or str(path).strip() == "":
        raise ValueError(f"ingest.path is required for source '{source}'")
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise ValueError(f"ingest.path '{root}' does not exist (source '{source}')")
    if not root.is_dir():
        raise ValueError(f"ingest.path '{root}' is not a directory (source '{source}' reads a folder)")
    return root


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@dataclass
class SourceReader:
    """Common state of the readers: the source type, its root, the item count when known, and notes."""

    source: str
    root: Path
    total: int | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[RawItem | Reject]:  # pragma: no cover - overridden
        raise NotImplementedError


class ImageFolderReader(SourceReader):
    """Hugging Face ``imagefolder``: images (nested folders allowed) + ``metadata.csv`` or ``metadata.jsonl``.

    Each metadata file lists images relative to its own folder in ``file_name``; the caption is in
    ``caption_column`` (``text``). Alternative captions come from ``extra_caption_columns`` (``auto``: every other
    column named like ``text_2``, ``caption_blip``, ``captions``) and from list values (a JSON list in a CSV cell).
    ``label_column`` (optional) gives the class label. Images no metadata row names are rejected (missing caption).
    """

    def __init__(self, path: str | os.PathLike | None, caption_column: str = "text",
                 extra_caption_columns: str | list[str] = "auto", label_column: str | None = None):
        root = require_dir(path, "imagefolder")
        super().__init__("imagefolder", root)
        self.caption_column = caption_column
        self.extra_caption_columns = extra_caption_columns
        self.label_column = label_column
        self.images: list[Path] = []
        self.metadata: list[Path] = []
        for p in walk_files(root):
            if is_image_file(p):
                self.images.append(p)
            elif p.name in METADATA_FILES:
                self.metadata.append(p)
        if not self.images:
            raise ValueError(f"no images found under '{root}' (source imagefolder; extensions {IMAGE_EXTENSIONS})")
        if not self.metadata:
            raise ValueError(
                f"no metadata.csv or metadata.jsonl under '{root}' (source imagefolder needs captions in a metadata "
                "file with file_name and text columns; use source classfolders for uncaptioned class folders)"
            )
        folders = [m.parent for m in self.metadata]
        both = sorted({str(f) for f in folders if folders.count(f) > 1})
        if both:
            raise ValueError(f"both metadata.csv and metadata.jsonl in {both}: keep one (source imagefolder)")
        self.total = len(self.images)

    def _rows(self, meta: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """(line number, row or None, error) for each row of a metadata file."""
        with open(meta, newline="", encoding="utf-8") as fh:
            if meta.suffix == ".csv":
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or "file_name" not in reader.fieldnames:
                    raise ValueError(f"{meta} has no file_name column (columns: {reader.fieldnames})")
                for i, row in enumerate(reader, start=2):
                    yield i, row, ""
            else:
                for i, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield i, None, f"invalid JSON: {exc}"
                        continue
                    if not isinstance(row, dict):
                        yield i, None, "a JSON line must be an object"
                        continue
                    yield i, row, ""

    def _caption_columns(self, row: Mapping[str, Any]) -> list[str]:
        if self.extra_caption_columns == "auto":
            extra = [c for c in row if c != self.caption_column and AUTO_CAPTION_COLUMN.match(str(c))]
        else:
            extra = [c for c in self.extra_caption_columns if c != self.caption_column]
        return [self.caption_column, *extra]

    def __iter__(self) -> Iterator[RawItem | Reject]:
        root = self.root
        listed: set[str] = set()
        for meta in self.metadata:
            meta_key = relative_key(meta, root)
            for line, row, error in self._rows(meta):
                where = f"{meta_key}:{line}"
                if row is None:
                    yield Reject(where, "invalid_metadata", error)
                    continue
                name = row.get("file_name")
                if name is None or str(name).strip() == "":
                    yield Reject(where, "invalid_metadata", "row has no file_name")
                    continue
                target = meta.parent / str(name).strip()
                if PurePosixPath(str(name)).is_absolute() or not _inside(target, root):
                    yield Reject(str(name), "invalid_file_name", f"{where}: file_name must be relative and inside the root")
                    continue
                key = relative_key(target, root)
                if key in listed:
                    yield Reject(key, "duplicate_file_name", f"{where}: listed more than once")
                    continue
                listed.add(key)
                if not target.is_file():
                    yield Reject(key, "missing_file", f"{where} names a file that does not exist")
                    continue
                captions, present = normalise_captions(row.get(c) for c in self._caption_columns(row))
                if not captions:
                    yield caption_reject(key, present, f"{where} ({self.caption_column})")
                    continue
                label = row.get(self.label_column) if self.label_column else None
                yield RawItem(key=key, data=target.read_bytes(), captions=captions,
                              class_label=None if label in (None, "") else str(label), file_name=key)
        for img in self.images:
            key = relative_key(img, root)
            if key not in listed:
                yield Reject(key, "missing_caption", "image not listed in any metadata file")


class ClassFoldersReader(SourceReader):
    """Imagenette-style ``<root>/<class>/<image>`` (deeper folders allowed): the top folder is the class label.

    Captions come from an optional JSON ``captions_file`` mapping image path → caption or list of captions (keys
    relative to the root; absolute or root-prefixed keys, as DCR's caption files use, are matched by their
    ``<class>/<file>`` tail). Without one, every image has no caption: ``caption`` is ``""`` and ``captions`` is
    ``[]`` (a WARNING says so; use the fixed, class or random caption types downstream).
    """

    def __init__(self, path: str | os.PathLike | None, captions_file: str | None = None):
        root = require_dir(path, "classfolders")
        super().__init__("classfolders", root)
        self.images = [p for p in walk_files(root) if is_image_file(p)]
        if not self.images:
            raise ValueError(f"no images found under '{root}' (source classfolders; extensions {IMAGE_EXTENSIONS})")
        self.total = len(self.images)
        self.captions: dict[str, Any] | None = None
        self.unmatched: list[str] = []
        if captions_file:
            self.captions = self._load_mapping(captions_file)
            self.notes["captions"] = f"captions_file {captions_file}"
        else:
            self.notes["captions"] = "none: no captions_file, caption is '' and captions is []"
            logger.warning("classfolders source '%s' has no captions_file: images get no caption "
                           "(caption '' and captions []); use caption types fixed/class/random", root)

    def _load_mapping(self, captions_file: str) -> dict[str, Any]:
        candidates = [Path(captions_file).expanduser(), self.root / captions_file]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(f"ingest.classfolders.captions_file '{captions_file}' not found (looked at "
                             f"{', '.join(str(c) for c in candidates)})")
        try:
            mapping = json.loads(found.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"captions_file '{found}' is not valid JSON: {exc}") from exc
        if not isinstance(mapping, dict):
            raise ValueError(f"captions_file '{found}' must be a JSON object mapping image path -> caption(s)")
        keys = {relative_key(p, self.root) for p in self.images}
        out: dict[str, Any] = {}
        for raw_key, value in mapping.items():
            key = self._match(str(raw_key), keys)
            if key is None:
                self.unmatched.append(str(raw_key))
            else:
                out[key] = value
        return out

    def _match(self, raw_key: str, keys: set[str]) -> str | None:
        key = PurePosixPath(raw_key.replace("\\", "/"))
        text = key.as_posix().removeprefix("./")
        if text in keys:
            return text
        for n in range(min(3, len(key.parts)), 1, -1):  # <class>/<file> tail of an absolute/prefixed path
            tail = PurePosixPath(*key.parts[-n:]).as_posix()
            if tail in keys:
                return tail
        return None

    def __iter__(self) -> Iterator[RawItem | Reject]:
        for raw_key in self.unmatched:
            yield Reject(raw_key, "missing_file", "captions_file names an image that does not exist")
        for img in self.images:
            key = relative_key(img, self.root)
            parts = PurePosixPath(key).parts
            if len(parts) < 2:
                yield Reject(key, "no_class_folder", "image lies directly in the root, not in a class folder")
                continue
            captions: list[str] = []
            if self.captions is not None:
                captions, present = normalise_captions([self.captions.get(key)])
                if not captions:
                    yield caption_reject(key, present, "captions_file")
                    continue
            yield RawItem(key=key, data=img.read_bytes(), captions=captions, class_label=parts[0], file_name=key)


class ParquetReader(SourceReader):
    """A parquet file (or a folder of them) with image bytes or image paths and caption columns.

    ``image_column`` may hold bytes, a path (relative to ``image_root``, default the parquet file's folder), or a
    Hugging Face ``Image`` struct (``{bytes, path}``). ``caption_column`` is the caption; ``extra_caption_columns``
    (``auto`` or a list) add alternatives; ``label_column`` and ``key_column`` are optional (default key:
    ``<file>:<row>``, or the image path for path columns). Batches of ``batch_rows`` rows are read at a time.
    """

    def __init__(self, path: str | os.PathLike | None, image_column: str = "image", caption_column: str = "text",
                 extra_caption_columns: str | list[str] = "auto", label_column: str | None = None,
                 key_column: str | None = None, image_root: str | None = None, batch_rows: int = 64):
        if path is None or str(path).strip() == "":
            raise ValueError("ingest.path is required for source 'parquet'")
        target = Path(str(path)).expanduser()
        if not target.exists():
            raise ValueError(f"ingest.path '{target}' does not exist (source 'parquet')")
        files = [target] if target.is_file() else [p for p in walk_files(target) if p.suffix == ".parquet"]
        if not files:
            raise ValueError(f"no .parquet files under '{target}' (source parquet)")
        super().__init__("parquet", target if target.is_dir() else target.parent)
        self.files = files
        self.image_column, self.caption_column = image_column, caption_column
        self.label_column, self.key_column = label_column, key_column
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.batch_rows = batch_rows
        self.total = 0
        self.columns: dict[Path, list[str]] = {}
        for f in files:
            try:
                pf = pq.ParquetFile(str(f))
            except (pa.ArrowException, OSError) as exc:
                raise ValueError(f"'{f}' is not a readable parquet file (source parquet): {exc}") from exc
            names = pf.schema_arrow.names
            needed = [c for c in (image_column, caption_column, label_column, key_column) if c]
            missing = [c for c in needed if c not in names]
            if missing:
                raise ValueError(f"parquet '{f}' lacks column(s) {missing} (ingest.parquet.*_column); it has {names}")
            if extra_caption_columns == "auto":
                extra = [c for c in names if c != caption_column and AUTO_CAPTION_COLUMN.match(c)]
            else:
                extra = [c for c in extra_caption_columns if c != caption_column]
                absent = [c for c in extra if c not in names]
                if absent:
                    raise ValueError(f"parquet '{f}' lacks extra caption column(s) {absent}; it has {names}")
            self.columns[f] = list(dict.fromkeys([*needed, *extra]))
            self.total += pf.metadata.num_rows
            biggest = max((pf.metadata.row_group(i).total_byte_size for i in range(pf.num_row_groups)), default=0)
            if biggest > LARGE_ROW_GROUP:
                logger.warning("parquet '%s' has a row group of %d MB: each row group's columns are read whole, "
                               "so memory grows with it; rewrite with smaller row groups (e.g. 256 rows) to bound "
                               "it", f, biggest >> 20)

    def _image(self, value: Any, base: Path) -> tuple[bytes | None, str | None, str]:
        """(bytes, file name, error) for one image cell."""
        if isinstance(value, dict):  # Hugging Face Image feature
            if value.get("bytes"):
                return value["bytes"], value.get("path"), ""
            value = value.get("path")
        if value is None:
            return None, None, "image cell is empty"
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value), None, ""
        rel = str(value)
        target = (self.image_root or base) / rel
        if not target.is_file():
            return None, rel, f"image path '{target}' does not exist"
        return target.read_bytes(), rel, ""

    def _rows(self, f: Path) -> Iterator[dict[str, Any]]:
        """The rows of one parquet file, ``batch_rows`` at a time (bounded by one row group in memory)."""
        with open_parquet(f) as pf:
            for batch in pf.iter_batches(batch_size=self.batch_rows, columns=self.columns[f]):
                yield from batch.to_pylist()

    def __iter__(self) -> Iterator[RawItem | Reject]:
        seen: set[str] = set()
        for f in self.files:
            rel_file = f.name if f.parent == self.root else relative_key(f, self.root)
            extra = [c for c in self.columns[f] if c not in (self.image_column, self.label_column, self.key_column)]
            for row_index, row in enumerate(self._rows(f)):
                where = f"{rel_file}:{row_index}"
                value = row.get(self.image_column)
                path_value = value.get("path") if isinstance(value, dict) and not value.get("bytes") else value
                if self.key_column:
                    key = str(row.get(self.key_column))
                else:
                    key = path_value if isinstance(path_value, str) else where
                if key in seen:
                    yield Reject(key, "duplicate_file_name", f"{where}: key appears more than once")
                    continue
                seen.add(key)
                data, name, error = self._image(value, f.parent)
                if data is None:
                    yield Reject(name or key, "missing_file" if name else "missing_image", f"{where}: {error}")
                    continue
                captions, present = normalise_captions(row.get(c) for c in extra)
                if not captions:
                    yield caption_reject(name or key, present, f"{where} ({self.caption_column})")
                    continue
                label = row.get(self.label_column) if self.label_column else None
                yield RawItem(key=key, data=data, captions=captions,
                              class_label=None if label in (None, "") else str(label), file_name=name)


class WebDatasetReader(SourceReader):
    """img2dataset tar shards: ``<key>.jpg|png|webp`` + ``<key>.txt`` and/or ``<key>.json`` (``caption_field``).

    ``ingest.path`` is one shard or a folder of shards (``.tar``, ``.tar.gz``, ``.tgz``; other files such as
    img2dataset's ``.parquet`` and ``_stats.json`` are ignored). Shards are streamed with ``tarfile`` in ``r|*``
    mode: one member in memory at a time. A sample's files must be consecutive in the tar, as webdataset requires.
    The ``.txt`` caption comes first, then the JSON caption(s) as alternatives.
    """

    def __init__(self, path: str | os.PathLike | None, caption_field: str = "caption"):
        if path is None or str(path).strip() == "":
            raise ValueError("ingest.path is required for source 'webdataset'")
        target = Path(str(path)).expanduser()
        if not target.exists():
            raise ValueError(f"ingest.path '{target}' does not exist (source 'webdataset')")
        shards = [target] if target.is_file() else [p for p in walk_files(target) if p.name.endswith(SHARD_SUFFIXES)]
        if not shards:
            raise ValueError(f"no tar shards ({', '.join(SHARD_SUFFIXES)}) under '{target}' (source webdataset)")
        super().__init__("webdataset", target if target.is_dir() else target.parent)
        self.shards = shards
        self.caption_field = caption_field

    @staticmethod
    def split_name(name: str) -> tuple[str, str]:
        """(sample key, extension) of a tar member: the key ends at the first dot of the base name."""
        folder, _, base = name.rpartition("/")
        stem, _, ext = base.partition(".")
        return (f"{folder}/{stem}" if folder else stem), ext.lower()

    def _samples(self, shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
        current: str | None = None
        files: dict[str, bytes] = {}
        with tarfile.open(str(shard), mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = self.split_name(member.name)
                if key != current:
                    if current is not None:
                        yield current, files
                    current, files = key, {}
                handle = tar.extractfile(member)
                files[ext] = handle.read() if handle is not None else b""
        if current is not None:
            yield current, files

    def _sample(self, shard_key: str, key: str, files: dict[str, bytes]) -> RawItem | Reject:
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in files), None)
        where = f"{shard_key}/{key}"
        if image_ext is None:
            return Reject(where, "missing_image", f"sample has no image file (has {sorted(files)})")
        values: list[Any] = []
        if "txt" in files:
            values.append(files["txt"].decode("utf-8", errors="replace"))
        if "json" in files:
            try:
                meta = json.loads(files["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return Reject(where, "invalid_metadata", f"{key}.json is not valid JSON: {exc}")
            if isinstance(meta, dict):
                values.append(meta.get(self.caption_field))
        captions, present = normalise_captions(values)
        if not captions:
            return caption_reject(f"{where}.{image_ext}", present, f"{key}.txt / {key}.json {self.caption_field}")
        return RawItem(key=key, data=files[image_ext], captions=captions, file_name=f"{where}.{image_ext}")

    def __iter__(self) -> Iterator[RawItem | Reject]:
        seen: set[str] = set()
        for shard in self.shards:
            shard_key = shard.name if shard.parent == self.root else relative_key(shard, self.root)
            try:
                for key, files in self._samples(shard):
                    if key in seen:
                        yield Reject(f"{shard_key}/{key}", "duplicate_file_name",
                                     "sample key seen before (keys must be unique across shards)")
                        continue
                    seen.add(key)
                    yield self._sample(shard_key, key, files)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                yield Reject(shard_key, "unreadable_shard", f"{type(exc).__name__}: {exc} (samples after it skipped)")


READERS = {
    "imagefolder": ImageFolderReader,
    "classfolders": ClassFoldersReader,
    "parquet": ParquetReader,
    "webdataset": WebDatasetReader,
}


def open_reader(source: str, path: str | os.PathLike | None, options: Mapping[str, Any] | None = None) -> SourceReader:
    """The reader for ``source`` on ``path`` with source ``options`` (keyword arguments of its class).

    Raises ``ValueError`` before any work for an unknown source, a missing path, or a bad option.
    """
    if source not in READERS:
        raise ValueError(f"unknown ingest.source '{source}': choose one of embedded, {', '.join(READERS)}")
    cls = READERS[source]
    opts = dict(options or {})
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "path")]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"unknown ingest.{source} option(s) {unknown}: allowed {allowed}")
    return cls(path, **opts)
