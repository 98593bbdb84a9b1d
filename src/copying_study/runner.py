"""``DaskRunner``: a Kedro run on Dask distributed, one task per namespace.

``kedro run --runner copying_study.runner.DaskRunner [--runner-params address=tcp://host:8786]``; without an address
the runner starts a :class:`distributed.LocalCluster` sized to the machine (one single-threaded worker process per
core) and closes it at the end.

How a run is cut into tasks (docs/scale-out.md):

* **groups**: :meth:`kedro.pipeline.Pipeline.group_nodes_by` ``("namespace")``. A study cell (``full_ddf10__s0``) or a
  stage of the default pipeline (``finetune``) is one group: its nodes run in order, on one worker, in one task, so
  its in-memory datasets never leave the process. A node outside any namespace is a group of its own. Groups run in
  the order of their dependencies; independent groups run at once.
* **hand-offs**: before anything runs, :func:`unsaved_handoffs` refuses a pipeline in which a dataset passes from
  one group to another without being saved to storage (the next worker would not see it), naming the dataset.
* **versions**: every group receives the driver's catalog, whose versions the run pinned before its first node
  (``copying_study.run_versions``): all groups save under the run's one version and read the same inputs.
* **GPUs**: a group holding a node tagged ``gpu`` asks the scheduler for ``resources={"GPU": 1}`` when the
  cluster's workers declare that resource (``dask worker --resources GPU=1``, dask-cuda's ``LocalCUDACluster``);
  without such workers it runs anywhere, and the runner says so once.
* **failures**: a group that raises is retried (``retries``, default 1), and a worker that dies mid-group has its
  group rescheduled by the scheduler; each attempt first deletes what an earlier attempt of the same group saved
  under this run's version, so a retry never meets a half-written dataset. Groups that finished are not re-run.
  When a group fails for good, the groups that do not depend on it still finish, the failed group's files of this
  version are deleted (no later run loads a half-written version), and the run raises one error naming the group.
* **hooks and MLflow**: node and dataset hooks run on the workers, on the project's hooks (``settings.HOOKS``). A
  hook object can take part in a distributed run through three optional methods: ``remote_state()`` (on the
  driver: a picklable dict), ``start_remote(catalog, state, group)`` and ``finish_remote(failed)`` (on the worker,
  around a group; returns a picklable dict), and ``merge_remote(group, result)`` (on the driver). The project's
  MLflow hook uses them to log from the workers into the run's MLflow run (the study's cells as child runs of it)
  and to bring every dataset version back into the run manifest.

Only public Kedro API is used, except :func:`saved_files` (the path a versioned file dataset writes to).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner, Task

from copying_study.utils.threads import limit_threads

logger = logging.getLogger(__name__)

GPU_TAG = "gpu"
GPU_RESOURCE = "GPU"


class DaskRunError(RuntimeError):
    """A distributed run that cannot start (bad pipeline, unreachable scheduler) or whose groups failed."""


@dataclass
class Group:
    """One task of a distributed run: nodes run in order on one worker."""

    name: str
    nodes: list  # kedro Node objects, topologically sorted
    dependencies: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        return any(GPU_TAG in node.tags for node in self.nodes)

    @property
    def outputs(self) -> set[str]:
        return {o for node in self.nodes for o in node.outputs}


def plan_groups(pipeline: Pipeline) -> list[Group]:
    """The run's groups (one per top-level namespace; a node outside any namespace alone) in an order in which each
    group comes after the groups it depends on. ``DaskRunError`` when the groups depend on each other in a cycle
    (a namespace whose nodes sit both before and after another namespace's)."""
    by_name = {node.name: node for node in pipeline.nodes}
    order = {node.name: i for i, node in enumerate(pipeline.nodes)}  # Kedro's topological order
    groups = {g.name: Group(g.name, sorted((by_name[n] for n in g.nodes), key=lambda n: order[n.name]),
                            list(g.dependencies))
              for g in pipeline.group_nodes_by("namespace")}
    done: list[Group] = []
    placed: set[str] = set()
    pending = sorted(groups.values(), key=lambda g: order[g.nodes[0].name])
    while pending:
        ready = [g for g in pending if set(g.dependencies) <= placed]
        if not ready:
            cycle = ", ".join(sorted(g.name for g in pending))
            raise DaskRunError(f"the groups {cycle} depend on each other in a cycle: a namespace's nodes run both "
                               f"before and after another namespace's; give them one namespace or none")
        for g in ready:
            done.append(g)
            placed.add(g.name)
        pending = [g for g in pending if g.name not in placed]
    return done


def critical_path_priority(groups: list[Group]) -> dict[str, int]:
    """Each group's number of downstream groups on its longest chain: a train cell whose model inference cells
    sample starts before a cell that nothing waits for (Dask runs higher priorities first among ready tasks)."""
    children: dict[str, list[str]] = {g.name: [] for g in groups}
    for g in groups:
        for d in g.dependencies:
            children[d].append(g.name)
    depth: dict[str, int] = {}
    for g in reversed(groups):  # groups are in dependency order: children come later
        depth[g.name] = max((1 + depth[c] for c in children[g.name]), default=0)
    return depth


def resources_for(group: Group, ask_gpu: bool) -> dict[str, int] | None:
    """The Dask resources a group's task asks for: one GPU when it holds a ``gpu``-tagged node and the run asks."""
    return {GPU_RESOURCE: 1} if (group.gpu and ask_gpu) else None


def _ephemeral(catalog: Any, name: str) -> bool:
    """Whether ``name`` lives only in the memory of the process that made it."""
    if name not in catalog:
        return True
    dataset = catalog.get(name)
    return isinstance(dataset, MemoryDataset) or bool(getattr(dataset, "_EPHEMERAL", False))


def unsaved_handoffs(groups: list[Group], catalog: Any) -> dict[str, tuple[str, list[str]]]:
    """``{dataset: (producing group, [consuming groups])}`` for every dataset that one group makes and another reads
    without it being saved to storage (a memory dataset)."""
    producer = {o: g.name for g in groups for o in g.outputs}
    found: dict[str, tuple[str, list[str]]] = {}
    for g in groups:
        for node in g.nodes:
            for name in node.inputs:
                source = producer.get(name)
                if source is None or source == g.name or not _ephemeral(catalog, name):
                    continue
                consumers = found.setdefault(name, (source, []))[1]
                if g.name not in consumers:
                    consumers.append(g.name)
    return found


def check_handoffs(groups: list[Group], catalog: Any) -> None:
    problems = unsaved_handoffs(groups, catalog)
    if problems:
        lines = [f"{name}: made by {src}, read by {', '.join(dst)}" for name, (src, dst) in sorted(problems.items())]
        raise DaskRunError(
            "DaskRunner: these datasets pass between groups (namespaces) that may run on different workers, but "
            "they are not saved to storage, so the next group would not see them. Declare them in the catalog "
            "(e.g. a pickle.PickleDataset), or put producer and consumer in one namespace; nothing was run:\n  "
            + "\n  ".join(lines))


def saved_files(dataset: Any) -> list[PurePosixPath]:
    """The path(s) a versioned file dataset writes for the version it saves (empty for other datasets). Uses the
    dataset's ``_get_versioned_path`` (kedro has no public accessor for it)."""
    if not isinstance(dataset, AbstractVersionedDataset) or not hasattr(dataset, "_get_versioned_path"):
        return []
    try:
        return [PurePosixPath(str(dataset._get_versioned_path(dataset.resolve_save_version())))]
    except Exception:  # noqa: BLE001 - a dataset without a save version has nothing of this run
        return []


def remove_saved(catalog: Any, names: set[str]) -> list[str]:
    """Delete what versioned datasets among ``names`` saved under the run's version (a failed or interrupted
    attempt's partial outputs; the run's version is its own, so nothing of another run is touched). Returns the
    deleted paths. Unversioned datasets are left alone: a rerun overwrites them."""
    removed = []
    for name in sorted(names):
        if name not in catalog:
            continue
        dataset = catalog.get(name)
        fs = getattr(dataset, "_fs", None)
        for path in saved_files(dataset):
            if fs is not None and getattr(fs, "protocol", None) not in ("file", ("file", "local")):
                if fs.exists(str(path)):
                    fs.rm(str(path), recursive=True)
                    removed.append(str(path))
                continue
            local = Path(str(path))
            if local.is_dir():
                shutil.rmtree(local)
            elif local.exists():
                local.unlink()
            else:
                continue
            removed.append(str(local))
            try:  # the version's now empty folder (<dataset>/<version>/)
                local.parent.rmdir()
            except OSError:
                pass
    return removed


def worker_catalog(pipeline: Pipeline, catalog: Any) -> DataCatalog:
    """A plain, picklable ``DataCatalog`` of the pipeline's datasets as the run's catalog holds them (pinned
    versions, parameters, the datasets hooks added); the session's catalog class is built at run time and does not
    pickle."""
    return DataCatalog(datasets={name: catalog.get(name, fallback_to_runtime_pattern=True)
                                 for name in sorted(pipeline.datasets())})


# -- the worker side ---------------------------------------------------------------------------------------------

_BOOTSTRAPPED: dict[str, Any] = {}
_BOOTSTRAP_LOCK = threading.Lock()


def _bootstrap(context: dict[str, Any]) -> None:
    """Configure the Kedro project once per worker process (settings, pipelines, logging, environment)."""
    key = context["package_name"]
    with _BOOTSTRAP_LOCK:
        if _BOOTSTRAPPED.get("package") == key:
            return
        from kedro.framework.project import configure_logging, configure_project

        os.environ.update(context.get("environ") or {})
        configure_project(key)
        if context.get("logging"):
            configure_logging(context["logging"])
        _BOOTSTRAPPED["package"] = key


def run_group(name: str, nodes: list, catalog: Any, run_id: str, context: dict[str, Any], *dependencies: Any
              ) -> dict[str, Any]:
    """Run one group's nodes in order on this worker (the task a :class:`DaskRunner` submits). ``dependencies``
    are the results of the groups it waits for (unused: they order the tasks). Returns the hooks' records."""
    _bootstrap(context)
    return _run_group(name, nodes, catalog, run_id, context)


class GroupError(RuntimeError):
    """A group's node raised on a worker: the node, the error and its traceback as text (always picklable, so the
    scheduler can hand it to the driver whatever the original exception holds)."""


def _hook_manager(settings: Any, hooks: list) -> Any:
    """A hook manager with ``hooks`` and the plugins, as ``kedro.runner.Task`` builds one for a ``ParallelRunner``
    subprocess (built once per group here)."""
    from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks, _register_hooks_entry_points

    manager = _create_hook_manager()
    _register_hooks(manager, hooks)
    _register_hooks_entry_points(manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
    return manager


def _run_group(name: str, nodes: list, catalog: Any, run_id: str, context: dict[str, Any]) -> dict[str, Any]:
    from kedro.framework.project import settings

    removed = remove_saved(catalog, {o for n in nodes for o in n.outputs})
    if removed:
        logging.getLogger(__name__).warning("group %s: removed %d file(s) an earlier attempt saved under this run's "
                                            "version: %s", name, len(removed), removed)
    threads = context.get("threads")
    with limit_threads(threads, threads):
        return _run_nodes(name, nodes, catalog, run_id, context, settings)


def _run_nodes(name: str, nodes: list, catalog: Any, run_id: str, context: dict[str, Any], settings: Any
               ) -> dict[str, Any]:
    import traceback

    # a hook that keeps a group's record gets a copy of its own for this group: a worker may run two groups at
    # once (a seceded task, such as the sharded dedup waiting for its sub-tasks, frees its thread for another)
    hooks = [copy.copy(hook) if hasattr(hook, "start_remote") else hook for hook in settings.HOOKS]
    remotes = [(i, hook) for i, hook in enumerate(hooks) if hasattr(hook, "start_remote")]
    for i, hook in remotes:
        hook.start_remote(catalog, (context.get("hook_states") or {}).get(i), name)
    failed = True
    started = time.perf_counter()
    manager = _hook_manager(settings, hooks)
    node = None
    try:
        load_counts = Counter(i for n in nodes for i in n.inputs)
        group_outputs = set(context.get("group_outputs", {}).get(name, ()))
        for node in nodes:
            Task(node=node, catalog=catalog, is_async=False, hook_manager=manager, run_id=run_id).execute()
            for dataset in node.inputs:  # free what no later node of the group reads (as Kedro's runners do)
                load_counts[dataset] -= 1
                if load_counts[dataset] < 1 and _ephemeral(catalog, dataset) and dataset not in group_outputs \
                        and not dataset.startswith("params:") and dataset != "parameters":
                    catalog.release(dataset)
        failed = False
        # memory outputs of the whole pipeline go back to the driver (Kedro's runners return them)
        returned = {o: catalog.load(o) for o in (context.get("returned_outputs") or {}).get(name, ())}
    except Exception as error:
        where = f"node {node.name}" if node is not None else "before its first node"
        raise GroupError(f"{where}: {type(error).__name__}: {error}\n{traceback.format_exc()}") from None
    finally:
        results = {i: hook.finish_remote(failed) for i, hook in remotes}
    return {"group": name, "hooks": results, "seconds": time.perf_counter() - started,
            "worker": _worker_address(), "outputs": returned}


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return None


# -- the driver side ---------------------------------------------------------------------------------------------

def _quiet_distributed() -> None:
    """Keep the ``distributed`` loggers at the level the project's logging declares (conf/logging.yml: WARNING;
    default WARNING): importing ``distributed`` sets them to INFO, and a local cluster's worker processes read the
    level from Dask's configuration (``DASK_LOGGING__DISTRIBUTED``)."""
    from kedro.framework.project import LOGGING

    declared = ((LOGGING or {}).get("loggers") or {}).get("distributed") or {}
    level = str(declared.get("level") or "WARNING").upper()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", str(level).lower())
    import dask

    dask.config.set({"logging.distributed": str(level).lower()})
    import distributed  # noqa: F401 - initialises its logging, then the project's level is put back

    logging.getLogger("distributed").setLevel(level)


def _connect(address: str | None, n_workers: int | None, threads_per_worker: int, timeout: float):
    """A client of the scheduler at ``address``, or of a new ``LocalCluster``. Returns ``(client, cluster)``."""
    _quiet_distributed()
    from distributed import Client, LocalCluster

    if address:
        try:
            return Client(address, timeout=f"{timeout}s"), None
        except (OSError, TimeoutError) as error:
            raise DaskRunError(f"DaskRunner: no Dask scheduler answered at {address} within {timeout:g} s "
                               f"({type(error).__name__}: {error}); start one (`dask scheduler`) or drop "
                               f"`address` to run on a local cluster") from None
    n = int(n_workers or os.cpu_count() or 1)
    # One single-threaded worker per core: nodes that use torch run one at a time per process, and Dask's nanny
    # gives every worker OMP/MKL_NUM_THREADS=1, so workers do not oversubscribe the cores.
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard=False)
    return Client(cluster), cluster


class DaskRunner(AbstractRunner):
    """Run a Kedro pipeline on Dask distributed, one task per namespace (module docstring).

    Args:
        address: the scheduler (``tcp://host:8786``); ``None`` starts a ``LocalCluster`` for the run.
        n_workers: workers of the local cluster (default: one per core).
        threads_per_worker: threads of each local worker (default 1: one group at a time per worker).
        retries: how often a group that raised is tried again (default 1).
        timeout: seconds to wait for the scheduler (default 10).
        gpu_resources: ``auto`` (ask for a GPU for ``gpu``-tagged groups when some worker declares the ``GPU``
            resource), ``true`` (always ask), ``false`` (never).
        threads: torch's intra-op and the BLAS threads in each group (default: the worker's, 1 under Dask's
            nanny). CPU results depend on them (float sums split differently), so a run's bytes equal a sequential
            run's at the same counts; the run manifest records them and ``copying-study audit`` re-runs with them.
        is_async: accepted for Kedro's ``--async``; groups load and save synchronously.
    """

    def __init__(self, address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
                 retries: int = 1, timeout: float = 10, gpu_resources: str | bool = "auto",
                 threads: int | None = None, is_async: bool = False):
        super().__init__(is_async=False)
        if is_async:
            logger.info("DaskRunner: --async is ignored (each group loads and saves in its own worker)")
        self.address = str(address) if address else None
        if n_workers is not None and int(n_workers) < 1:
            raise ValueError(f"DaskRunner: n_workers={n_workers!r} must be at least 1")
        if int(threads_per_worker) < 1:
            raise ValueError(f"DaskRunner: threads_per_worker={threads_per_worker!r} must be at least 1")
        if int(retries) < 0:
            raise ValueError(f"DaskRunner: retries={retries!r} must be 0 or more")
        gpu = str(gpu_resources).lower()
        if gpu not in ("auto", "true", "false"):
            raise ValueError(f"DaskRunner: gpu_resources={gpu_resources!r}: use auto, true or false")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"DaskRunner: threads={threads!r} must be at least 1")
        self.threads = int(threads) if threads is not None else None
        self.n_workers = n_workers
        self.threads_per_worker = int(threads_per_worker)
        self.retries = int(retries)
        self.timeout = float(timeout)
        self.gpu_resources = gpu
        self.last_run: dict[str, Any] = {}

    def __str__(self) -> str:  # what the run manifest records as the run's runner
        where = self.address or f"LocalCluster(n_workers={self.n_workers or os.cpu_count()})"
        return f"DaskRunner({where}, retries={self.retries})"

    def _get_executor(self, max_workers: int):  # AbstractRunner's interface; Dask schedules here
        return None

    def _context(self, hook_manager: Any, groups: list[Group]) -> dict[str, Any]:
        from kedro.framework.project import LOGGING, PACKAGE_NAME, settings

        if PACKAGE_NAME is None:
            raise DaskRunError("DaskRunner runs a Kedro project: bootstrap it first (kedro run, or "
                               "bootstrap_project + KedroSession)")
        states = {i: hook.remote_state() for i, hook in enumerate(settings.HOOKS) if hasattr(hook, "remote_state")}
        environ = {k: v for k, v in os.environ.items()
                   if k.startswith(("COPYING_STUDY_", "MLFLOW_", "HF_", "TRANSFORMERS_", "KEDRO_"))
                   or k in ("DO_NOT_TRACK",)}
        return {"package_name": PACKAGE_NAME, "logging": dict(LOGGING) if LOGGING else None, "hook_states": states,
                "environ": environ, "group_outputs": {g.name: sorted(g.outputs) for g in groups}}

    @staticmethod
    def _returned_outputs(pipeline: Pipeline, groups: list[Group], catalog: Any) -> dict[str, list[str]]:
        free = {o for o in pipeline.outputs() if _ephemeral(catalog, o)}
        return {g.name: sorted(g.outputs & free) for g in groups if g.outputs & free}

    def _run(self, pipeline: Pipeline, catalog: Any, hook_manager: Any = None, run_id: str | None = None) -> None:
        from distributed import wait

        from kedro.framework.project import settings

        groups = plan_groups(pipeline)
        check_handoffs(groups, catalog)
        context = self._context(hook_manager, groups)
        context["returned_outputs"] = self._returned_outputs(pipeline, groups, catalog)
        context["threads"] = self.threads
        shipped = worker_catalog(pipeline, catalog)
        started = time.perf_counter()
        client, cluster = _connect(self.address, self.n_workers, self.threads_per_worker, self.timeout)
        try:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
            has_gpu = any((w.get("resources") or {}).get(GPU_RESOURCE) for w in workers.values())
            ask_gpu = self.gpu_resources == "true" or (self.gpu_resources == "auto" and has_gpu)
            if any(g.gpu for g in groups) and not ask_gpu:
                logger.info("DaskRunner: no worker declares a %s resource; groups with gpu-tagged nodes run on any "
                            "worker", GPU_RESOURCE)
            logger.info("DaskRunner: %d group(s) on %s (%d workers)", len(groups), self.address or "a local cluster",
                        len(workers))
            # every worker imports and configures the project at once, before the first group needs one
            client.run(_bootstrap, context)
            priority = critical_path_priority(groups)
            futures: dict[str, Any] = {}
            for g in groups:
                futures[g.name] = client.submit(
                    run_group, g.name, g.nodes, shipped, run_id, context,
                    *(futures[d] for d in g.dependencies),
                    key=f"group-{g.name}-{run_id}", pure=False, retries=self.retries,
                    resources=resources_for(g, ask_gpu), priority=priority[g.name])
            self._follow(client, futures, groups, catalog)
            wait(list(futures.values()))
            failed = {name: f for name, f in futures.items() if f.status != "finished"}
            if failed:
                self._fail(failed, groups, catalog, settings)
            self.last_run = {"groups": [g.name for g in groups], "workers": len(workers),
                             "seconds": time.perf_counter() - started}
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _follow(self, client: Any, futures: dict[str, Any], groups: list[Group], catalog: Any) -> None:
        """Log each group as it finishes and hand its hooks' records to the driver's hooks."""
        from distributed import as_completed

        from kedro.framework.project import settings

        names = {f.key: name for name, f in futures.items()}
        done = 0
        for future in as_completed(list(futures.values())):
            name = names[future.key]
            if future.status != "finished":
                continue
            result = future.result()
            done += 1
            for i, record in (result.get("hooks") or {}).items():
                hook = settings.HOOKS[i]
                if hasattr(hook, "merge_remote"):
                    hook.merge_remote(name, record)
            for output, data in (result.get("outputs") or {}).items():
                catalog.save(output, data)
            logger.info("Completed group %s on %s in %.1f s (%d of %d groups)", name, result.get("worker"),
                        result.get("seconds", 0.0), done, len(groups))

    def _fail(self, failed: dict[str, Any], groups: list[Group], catalog: Any, settings: Any) -> None:
        """Clean up after groups that failed for good and raise one error naming them."""
        by_name = {g.name: g for g in groups}
        first_error: BaseException | None = None
        lines = []
        for name, future in failed.items():
            if any(d in failed for d in by_name[name].dependencies) or future.status != "error":
                lines.append(f"{name}: not run (a group it depends on failed)")
                continue
            error = future.exception()
            removed = remove_saved(catalog, by_name[name].outputs)
            first_error = first_error or error
            text = str(error)
            if isinstance(error, GroupError):  # the first line says where and what; the traceback goes to the log
                logger.error("group %s failed on its worker:\n%s", name, text)
                text = text.splitlines()[0]
            else:  # the scheduler's own error (e.g. KilledWorker: the worker died on every attempt)
                text = f"{type(error).__name__}: {text}"
            lines.append(f"{name}: {text}"
                         + (f" (removed its {len(removed)} partial output file(s) of this run)" if removed else ""))
        for hook in settings.HOOKS:
            if hasattr(hook, "remote_failed"):
                hook.remote_failed([n for n, line in zip(failed, lines, strict=True) if "not run" not in line])
        raise DaskRunError("DaskRunner: groups failed:\n  " + "\n  ".join(lines)) from first_error
