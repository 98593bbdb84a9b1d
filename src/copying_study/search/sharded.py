"""Dedup at dataset scale on Dask distributed: training descriptors and the threshold graph as tasks over shards.

Both functions take the caller's ``distributed.Client`` (inside a Dask task: ``distributed.worker_client()``; in a
notebook: ``Client(...)``) and give the result of the single-process path on the same data:

* :func:`sharded_descriptors`: the training table's images in shards of whole descriptor batches, one task per
  shard; each worker process loads the descriptor model once. The workers return the model's raw features and this
  process fits and applies the whitening, as ``Descriptor.encode`` does: the fit depends on the BLAS thread count
  (measured), so it happens once, here, at this process's count, and the shard tasks run at this process's torch and
  BLAS thread counts too. The arrays are bit-identical to ``descriptor.encode_rows`` in this process (tested).
* :func:`sharded_threshold_pairs`: the threshold self-join as query-shard × index-shard range searches. The
  embeddings are scattered once. ``flat``: each task builds the exact index of its index shard (blocks of the upper
  triangle only); ``ivf``: the coarse quantiser is trained once here on ``build_index``'s seeded sample, the shards
  are added to copies of it in parallel, and every query shard searches every index shard. Each task writes its
  pairs (``i < j``, global rows, ``s >= threshold``) to one parquet file under ``edges_dir``; they are read back in
  task order, de-duplicated and capped at ``max_neighbors`` per row as ``threshold_pairs`` does
  (``torch_join.cap_pairs``, also applied inside each task to bound its memory: it never drops a pair the full set
  keeps). Same pairs as ``threshold_pairs`` (tested, with rows over ``max_neighbors`` and for ``ivf``), except
  where float32 rounding decides: a score within a bit of the threshold, equal scores at a row's ``max_neighbors``
  boundary (faiss's order among ties is unspecified), an IVF vector within a bit of two centroids. Scores may differ
  in the last bit (another summation order), so ``find_clusters`` rescores the pairs whichever engine found them.
  The searches run on the workers' CPUs (faiss's GPU indexes have no range search). Binary descriptors (PDQ) are
  searched as their ±1/16 float vectors, whose inner products are exact: the pairs of the exact binary search.

:func:`dask_client` turns ``dedup.distributed`` (``auto`` | ``true`` | ``false``) into a client or ``None``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from copying_study.search.index import as_descriptors, build_index, metric_of
from copying_study.search.neighbours import _unique_pairs, _warn_truncated, check_threshold
from copying_study.search.torch_join import cap_pairs
from copying_study.utils.seeding import numpy_rng

logger = logging.getLogger(__name__)

ENGINE_SETTINGS = ("auto", True, False)
#: index kinds the sharded search runs: exact ones (``hash`` is exact for binary descriptors, whose ±1/16 vectors
#: have exact float inner products) and ``ivf`` on inner-product descriptors
SHARDED_KINDS = {"ip": ("flat", "ivf"), "hamming": ("flat", "hash")}

#: descriptors loaded in this (worker) process, keyed by the spec's JSON and the device: one model per process
_DESCRIPTORS: dict[str, Any] = {}
_DESCRIPTORS_LOCK = threading.Lock()


@contextmanager
def dask_client(setting: str | bool, parameter: str = "dedup.distributed") -> Iterator[Any]:
    """The client the Dask engine uses for ``setting``, or ``None`` for the single-process engine.

    Inside a Dask task (``distributed.get_worker()`` succeeds: e.g. a node run by ``DaskRunner``) ``auto`` and
    ``true`` give ``worker_client()``, which secedes the task so that its sub-tasks can use this worker's thread too;
    outside one, ``auto`` gives ``None`` and ``true`` the process's ``distributed.get_client()`` (``ValueError``
    naming ``parameter`` when there is none); ``false`` always gives ``None``.
    """
    if setting not in ENGINE_SETTINGS or not isinstance(setting, (str, bool)):
        raise ValueError(f"{parameter} must be auto, true or false, got {setting!r}")
    if setting is False:
        yield None
        return
    from distributed import get_client, get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        if setting == "auto":
            yield None
            return
        try:
            client = get_client()
        except ValueError:
            raise ValueError(f"{parameter} is true but this process has no Dask client: create one first "
                             f"(distributed.Client(...)), run with copying_study.runner.DaskRunner, or set "
                             f"{parameter} to auto or false") from None
        yield client
        return
    with worker_client() as client:
        yield client


def check_shard_size(shard_size: Any, parameter: str) -> int:
    """``shard_size`` as an int >= 1; ``ValueError`` naming ``parameter`` otherwise."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise ValueError(f"{parameter} must be an integer >= 1, got {shard_size!r}")
    return int(shard_size)


def n_workers(client: Any) -> int:
    """Workers the scheduler knows now (for the log line that names the engine)."""
    return len(client.nthreads())


# -- descriptors ---------------------------------------------------------------------------------------------------


def sharded_descriptors(
    client: Any, images: Sequence[bytes], descriptor_spec: Mapping[str, Any] | str, device: str | None,
    shard_size: int, parameter: str = "dedup.distributed_shard_size.descriptors",
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Descriptors of encoded ``images`` (PNG bytes) in their order, computed by Dask tasks over shards:
    ``(embeddings float32 [N, dim], row_info, meta)`` as ``descriptor.encode_rows`` and ``descriptor.meta()`` give
    them in this process.

    A shard holds ``shard_size`` images rounded up to whole descriptor batches, so every batch holds the images it
    holds in ``encode_rows`` (measured: the default descriptor's values do not depend on the batch; a model's may).
    Shards are scattered as they are submitted, two per worker thread ahead, so the workers hold a few shards of
    images at a time, not a second copy of the table.
    """
    from distributed import as_completed

    from copying_study.descriptors import load_descriptor
    from copying_study.utils.threads import current_threads

    size = check_shard_size(shard_size, parameter)
    if len(images) == 0:
        raise ValueError("no images to describe (empty training set)")
    descriptor = load_descriptor(descriptor_spec, device=device)  # this process: the meta and the whitening
    rows = math.ceil(size / descriptor.batch_size) * descriptor.batch_size
    spec = {"name": descriptor_spec} if isinstance(descriptor_spec, str) else dict(descriptor_spec)
    spec["whitening"] = None  # the workers return the model's raw features; the whitening is fitted here
    threads = current_threads()
    starts = range(0, len(images), rows)
    parts: list[Any] = [None] * len(starts)
    done = as_completed(loop=client.loop)
    shard_of: dict[str, int] = {}

    def submit(k: int) -> None:
        [data] = client.scatter([list(images[starts[k]:starts[k] + rows])], broadcast=False, hash=False)
        future = client.submit(_encode_shard, data, spec, device, threads, pure=False)
        shard_of[future.key] = k
        done.add(future)

    # a few shards per worker thread in flight: the workers never hold more than those of the table's images
    ahead = 2 * sum(client.nthreads().values())
    for k in range(min(ahead, len(starts))):
        submit(k)
    following = iter(range(ahead, len(starts)))
    for future in done:
        parts[shard_of.pop(future.key)] = future.result()
        k = next(following, None)
        if k is not None:
            submit(k)
    raw = np.concatenate([p[0] for p in parts])
    row_info = {key: np.concatenate([p[1][key] for p in parts]) for key in parts[0][1]}
    embeddings = descriptor.whitening().apply(raw) if descriptor.whitening_spec else raw
    return embeddings, row_info, descriptor.meta()


def _worker_descriptor(spec: Mapping[str, Any], device: str | None) -> Any:
    """This process's descriptor for ``spec`` on ``device``, loaded on first use."""
    from copying_study.descriptors import load_descriptor

    key = json.dumps({"spec": spec, "device": device}, sort_keys=True, default=str)
    with _DESCRIPTORS_LOCK:
        if key not in _DESCRIPTORS:
            _DESCRIPTORS[key] = load_descriptor(spec, device=device)
        return _DESCRIPTORS[key]


def _encode_shard(images: list[bytes], spec: Mapping[str, Any], device: str | None, threads: Mapping[str, int]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One shard's raw descriptors and row info (a task), at the calling process's thread counts."""
    from copying_study.descriptors import EncodedImages
    from copying_study.utils.threads import limit_threads

    descriptor = _worker_descriptor(spec, device)
    with limit_threads(threads.get("torch"), threads.get("blas")):
        return descriptor.encode_rows(EncodedImages(images), desc="training descriptors (shard)")


# -- threshold graph -----------------------------------------------------------------------------------------------


def can_shard(kind: str, meta: Mapping[str, Any] | None = None) -> bool:
    """Whether :func:`sharded_threshold_pairs` runs search index ``kind`` for descriptors with this ``meta``."""
    return kind in SHARDED_KINDS[metric_of(meta)]


def sharded_threshold_pairs(
    client: Any,
    embeddings: Any,
    threshold: float,
    meta: Mapping[str, Any] | None,
    shard_size: int,
    edges_dir: str | Path,
    *,
    kind: str = "flat",
    max_neighbors: int = 2048,
    nlist: int | None = None,
    nprobe: int = 16,
    seed: int = 0,
    parameter: str = "dedup.distributed_shard_size.search",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``threshold_pairs(embeddings, threshold, kind=kind, meta=meta, max_neighbors=...)`` as Dask tasks over
    shards of ``shard_size`` rows: arrays ``i < j`` (int64, sorted), ``s`` (float32). ``edges_dir`` must be a folder
    that the workers and this process share (one parquet file per task is written there and read back)."""
    t = check_threshold(threshold)
    size = check_shard_size(shard_size, parameter)
    if not can_shard(kind, meta):
        raise ValueError(f"the sharded search runs index kinds {', '.join(SHARDED_KINDS[metric_of(meta)])} for "
                         f"{metric_of(meta)} descriptors, not '{kind}': use dedup.distributed false")
    if int(max_neighbors) < 1:
        raise ValueError(f"need max_neighbors >= 1, got {max_neighbors}")
    x = as_descriptors(embeddings, "descriptors")
    n = x.shape[0]
    cap = min(int(max_neighbors), n)
    bounds = [(k, min(k + size, n)) for k in range(0, n, size)]
    out = Path(edges_dir)
    out.mkdir(parents=True, exist_ok=True)
    # hash=False: a fresh key per call (a content key equal to an earlier call's, still being released, gets lost)
    data = client.scatter(x, broadcast=False, hash=False)
    if kind == "ivf":
        trained = client.scatter(_trained_ivf(x, nlist, nprobe, seed), broadcast=False, hash=False)
        indexes = [client.submit(_ivf_shard, data, b0, b1, trained, pure=False) for b0, b1 in bounds]
        blocks = [(q, b) for q in range(len(bounds)) for b in range(len(bounds))]  # IVF is not symmetric
    else:
        indexes = [None] * len(bounds)
        blocks = [(q, b) for q in range(len(bounds)) for b in range(q, len(bounds))]
    futures = [client.submit(_search_block, data, bounds[q], bounds[b], indexes[b], t, cap,
                             str(out / f"edges_q{q:05d}_b{b:05d}.parquet"), pure=False) for q, b in blocks]
    paths = client.gather(futures)
    i, j, s = _read_edges(paths)
    i, j, s = _unique_pairs(i, j, s, n)
    i, j, s, truncated = cap_pairs(i, j, s, n, cap)
    _warn_truncated(truncated, cap, t)
    return i, j, s


def _trained_ivf(x: np.ndarray, nlist: int | None, nprobe: int, seed: int) -> np.ndarray:
    """An empty ``IndexIVFFlat`` (serialised) trained exactly as ``build_index(x, "ivf", ...)`` trains it: the same
    default ``nlist`` for N rows, the same seeded sample and k-means seed."""
    import faiss

    n = x.shape[0]
    nlist = int(nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))  # build_index's default for N rows
    m = min(n, 64 * nlist)
    sample = x if m >= n else x[np.sort(numpy_rng(seed, "search", "ivf_train").choice(n, m, replace=False))]
    index = build_index(sample, "ivf", nlist=nlist, nprobe=nprobe, train_size=m, seed=seed, use_gpu=False).index
    index.reset()  # keep the trained quantiser, drop the sample's vectors
    return faiss.serialize_index(index)


def _ivf_shard(x: np.ndarray, b0: int, b1: int, trained: np.ndarray) -> np.ndarray:
    """The trained IVF index with rows ``b0:b1`` added under their global ids (a task), serialised."""
    import faiss

    index = faiss.deserialize_index(trained)
    index.add_with_ids(x[b0:b1], np.arange(b0, b1, dtype=np.int64))
    return faiss.serialize_index(index)


def _search_block(x: np.ndarray, rows: tuple[int, int], base: tuple[int, int], index: np.ndarray | None, t: float,
                  cap: int, path: str) -> str:
    """Rows ``rows`` searched against rows ``base`` (a task): pairs ``i < j`` with score >= ``t``, capped at ``cap``
    per row within the block, written to ``path``. ``index``: the base's serialised IVF index, or ``None`` for an
    exact flat index built here."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    q0, q1 = rows
    if index is None:
        searched, offset = build_index(x[base[0]:base[1]], "flat", use_gpu=False, metric="ip").index, base[0]
    else:
        searched, offset = faiss.deserialize_index(index), 0
    # faiss keeps scores strictly above the radius; the threshold test is the same float32 ``>=`` as threshold_pairs'
    radius = float(np.nextafter(np.float32(t), np.float32(-np.inf)))
    lims, d, nb = searched.range_search(x[q0:q1], radius)
    hit = d >= np.float32(t)
    i = np.repeat(np.arange(q0, q1, dtype=np.int64), np.diff(lims).astype(np.int64))[hit]
    i, j, s = _unique_pairs(i, nb[hit].astype(np.int64) + offset, d[hit], x.shape[0])
    if i.size > cap:  # only then can a row hold more than cap pairs
        i, j, s, _ = cap_pairs(i, j, s, x.shape[0], cap)
    pq.write_table(pa.table({"i": i, "j": j, "s": s}), path)
    return path


def _read_edges(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tasks' parquet files concatenated in task order; ``FileNotFoundError`` when this process cannot see
    them (``edges_dir`` is not on storage shared with the workers)."""
    import pyarrow.parquet as pq

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"the workers wrote {len(missing)} edge file(s) this process cannot read (e.g. "
                                f"{missing[0]}): the edges folder must be on storage the workers and this process "
                                "share")
    tables = [pq.read_table(p) for p in paths]
    return tuple(np.concatenate([tb.column(c).to_numpy() for tb in tables]) for c in ("i", "j", "s"))
