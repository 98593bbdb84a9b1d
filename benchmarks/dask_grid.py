"""DaskRunner against Kedro's SequentialRunner, in the same run, on this machine: a reduced study grid, and the same
grid's shape with GPU-like cells (their cost is waiting, not computing).

    python benchmarks/dask_grid.py                 # both tables (about 10 minutes on 2 cores)
    python benchmarks/dask_grid.py --part wait     # the GPU-like table only (about 1 minute)
    python benchmarks/dask_grid.py --workers 4 --seeds 0,1,2,3

**real**: the study pipeline (``kedro run --pipelines=study``) on a grid of one train cell and one inference cell
per seed, at tiny sizes (the tests' 16-px model, a seconds-sized embedded base), in a throw-away copy of the
project, once with each runner. Each run is a fresh process; its wall time, the driver's peak RSS and, for Dask,
every worker's peak RSS are reported. On CPU the two workers share the cores the sequential run uses with torch's
threads, so the ratio shows the overhead and what task parallelism adds on top of intra-op threads.

**wait**: the study grid's groups and dependencies (ingest, dedup, then per seed and train configuration a train
cell whose finetune and generate wait ``--train-wait`` / ``--gen-wait`` seconds and an inference cell on its model
that waits ``--gen-wait``, then the collect node; 3 seeds x 2 configurations by default), each node sleeping
instead of computing: what a cluster of GPU workers sees when the CPU is free while a GPU works. The ratio on 2
workers approaches 2 as the cells outweigh the cluster's start-up and the serial data stages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- the real grid, one mode per fresh process ---------------------------------------------------------------------

def grid_project(root: Path, seeds: list[int]) -> Path:
    """A copy of the project's conf with a reduced grid at the tests' tiny sizes."""
    import yaml

    sys.path.insert(0, str(REPO))
    from tests.conftest import use_tiny_base
    from tests.finetune.helpers import TEST_TINY

    project = root / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    use_tiny_base(project / "conf")
    for sub in ("conf/local", "data", "src"):
        (project / sub).mkdir(exist_ok=True)
    grid = {"study": {
        "seeds": seeds,
        "shared": {"finetune": {"steps": 40, "batch_size": 8, "sample_every": 0, "sample_prompts": 0,
                                "checkpoint_every": 0, "log_every": 10, "lr_warmup_steps": 2}},
        "train_cells": {"full_ddf5": {"finetune": {"duplication": "full", "ddf": 5}}},
        "inference_cells": {"full_ddf5_rt": {"from": "full_ddf5", "generate": {"mitigation": "rt"}}},
        "report": {"gallery_n": 2},
    }}
    params = {
        "device": "cpu",
        "ingest": {"embedded": {"n_images": 32, "n_clusters": 2, "copies_per_cluster": 2}, "resolution": 16},
        "finetune": {"tiny": TEST_TINY, "resolution": 16, "dup_fraction": 0.2},
        "generate": {"n_images": 16, "steps": 10, "batch_size": 8, "grid_size": 4},
        "evaluate": {"bootstrap": {"n_boot": 200}, "plots": {"gallery_n": 2}, "fid": {"enabled": False}},
        "complexity": {"n_boot": 200, "image_size": 16},
    }
    (project / "conf" / "base" / "parameters_study.yml").write_text(yaml.safe_dump(grid))
    (project / "bench_params.json").write_text(json.dumps(params))  # --params of every run (merged key by key)
    return project


def bench_params(project: Path) -> dict:
    return json.loads((project / "bench_params.json").read_text())


def run_mode(project: Path, mode: str, workers: int) -> dict:
    """Run the study pipeline with one runner in this process; returns wall time and peak RSS (MB)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    os.chdir(project)
    bootstrap_project(project)
    out: dict = {"mode": mode}
    if mode == "sequential":
        start = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=bench_params(project)) as session:
            session.run(pipeline_names=["study"])
        out["seconds"] = time.perf_counter() - start
    else:
        from distributed import Client, LocalCluster

        from copying_study.runner import DaskRunner

        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            start = time.perf_counter()  # the cluster is up: the time is the run's (start-up measured apart)
            with KedroSession.create(project_path=project, runtime_params=bench_params(project)) as session:
                session.run(pipeline_names=["study"], runner=DaskRunner(address=cluster.scheduler_address))
            out["seconds"] = time.perf_counter() - start
            with Client(cluster) as client:
                rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            out["worker_peak_rss_mb"] = sorted(round(v / 1024) for v in rss.values())
    out["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def real_table(args) -> list[dict]:
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        project = grid_project(Path(tmp), seeds)
        # the embedded base is built once (cached in the project's data/) before either timed run
        subprocess.run([sys.executable, __file__, "--child", "build-base", "--project", str(project)], check=True)
        rows = []
        for mode in ("sequential", "dask"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--project", str(project),
                                   "--workers", str(args.workers)], check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if args.verbose:  # each group's time on its worker (DaskRunner's log)
                print("\n".join(line for line in (done.stdout + done.stderr).splitlines()
                                if "Completed group" in line or "Pipeline execution completed" in line))
    return rows


def build_base(project: Path) -> None:
    os.chdir(project)
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    params = bench_params(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["ingest", "dedup_clusters"])
    params["finetune"]["steps"] = 1  # a one-step finetune builds (and caches) the embedded base
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["finetune"])


# -- the GPU-like grid ------------------------------------------------------------------------------------------

def wait_pipeline(seeds: list[int], configs: int):
    """ingest, dedup, then per seed and train configuration a train cell (finetune, generate, evaluate) and an
    inference cell on its model (generate, evaluate), then the collect node: the study grid's groups."""
    from kedro.pipeline import Node, Pipeline

    from benchmarks.dask_wait_nodes import collect, data_stage, wait_stage

    data = Pipeline([Node(data_stage, "params:data_wait", "training_set", name="ingest_training_set",
                          namespace="ingest"),
                     Node(data_stage, "params:data_wait", "train_descriptors", name="dedup_descriptors",
                          namespace="dedup_clusters")])
    cells, outputs = [], []
    for seed in seeds:
        for config in range(configs):
            train, infer = f"train{config}__s{seed}", f"infer{config}__s{seed}"
            cells.append(Pipeline([
                Node(wait_stage, ["training_set", "params:train_wait"], f"{train}.finetuned_model",
                     name="finetune_model", namespace=train),
                Node(wait_stage, [f"{train}.finetuned_model", "params:gen_wait"], f"{train}.generations",
                     name="generate_images", namespace=train),
                Node(wait_stage, [f"{train}.generations", "params:eval_wait"], f"study_cell_{train}",
                     name="evaluate", namespace=train)]))
            cells.append(Pipeline([
                Node(wait_stage, [f"{train}.finetuned_model", "params:gen_wait"], f"{infer}.generations",
                     name="generate_images", namespace=infer),
                Node(wait_stage, [f"{infer}.generations", "params:eval_wait"], f"study_cell_{infer}",
                     name="evaluate", namespace=infer)]))
            outputs += [f"study_cell_{train}", f"study_cell_{infer}"]
    return sum(cells, data) + Pipeline([Node(collect, outputs, "study_results", name="collect_study")])


def wait_table(args) -> list[dict]:
    import warnings

    from kedro.framework.project import configure_project
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.pickle import PickleDataset

    from copying_study.runner import DaskRunner

    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    configure_project("copying_study")
    seeds = [int(s) for s in args.wait_seeds.split(",")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dotted dataset names outside their namespace, on purpose
        pipeline = wait_pipeline(seeds, args.wait_configs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("sequential", "dask"):
            catalog = DataCatalog(datasets={
                **{name: PickleDataset(filepath=f"{tmp}/{mode}/{name}.pkl")
                   for name in pipeline.datasets() if not name.startswith("params:")},
                "params:data_wait": MemoryDataset(0.5), "params:train_wait": MemoryDataset(args.train_wait),
                "params:gen_wait": MemoryDataset(args.gen_wait), "params:eval_wait": MemoryDataset(0.2)})
            if mode == "sequential":
                start = time.perf_counter()
                SequentialRunner().run(pipeline, catalog, run_id=f"bench-{mode}")
                rows.append({"mode": mode, "seconds": time.perf_counter() - start})
                continue
            from distributed import Client, LocalCluster

            up = time.perf_counter()
            with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster:
                up = time.perf_counter() - up
                for attempt in ("fresh", "warm"):  # fresh: the workers import the project first; warm: a 2nd run
                    shutil.rmtree(f"{tmp}/{mode}", ignore_errors=True)
                    start = time.perf_counter()
                    DaskRunner(address=cluster.scheduler_address).run(pipeline, catalog, run_id=f"bench-{attempt}")
                    seconds = time.perf_counter() - start
                    with Client(cluster) as client:
                        rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                    rows.append({"mode": f"dask ({attempt} workers)", "seconds": seconds,
                                 "cluster_start_s": up if attempt == "fresh" else None,
                                 "worker_peak_rss_mb": sorted(round(v / 1024) for v in rss.values())})
    return rows


def print_table(title: str, rows: list[dict], note: str) -> None:
    base = next(r["seconds"] for r in rows if r["mode"] == "sequential")
    print(f"\n{title}")
    print(f"{'runner':<30}{'wall s':>9}{'speed-up':>10}  memory (peak RSS, MB)")
    for r in rows:
        memory = (f"driver {r['driver_peak_rss_mb']}" if "driver_peak_rss_mb" in r else "")
        if r.get("worker_peak_rss_mb"):
            memory += f"{', ' if memory else ''}workers {r['worker_peak_rss_mb']}"
        if r.get("cluster_start_s") is not None:
            memory += f" (cluster start-up {r['cluster_start_s']:.1f} s, not in the wall time)"
        name = {"sequential": "SequentialRunner", "dask": "DaskRunner"}.get(r["mode"]) or \
            f"DaskRunner, {r['mode'][6:-1]}"
        print(f"{name:<30}{r['seconds']:>9.1f}{base / r['seconds']:>9.2f}x  {memory}")
    print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "real", "wait"], default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--wait-seeds", default="0,1,2", help="seeds of the GPU-like grid")
    parser.add_argument("--wait-configs", type=int, default=2, help="train configurations of the GPU-like grid")
    parser.add_argument("--train-wait", type=float, default=8.0)
    parser.add_argument("--gen-wait", type=float, default=4.0)
    parser.add_argument("--verbose", action="store_true", help="print each group's time (real grid)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("COPYING_STUDY_NO_PROGRESS", "1")
    os.environ.setdefault("COPYING_STUDY_MLFLOW", "0")
    if args.child == "build-base":
        build_base(Path(args.project))
        return
    if args.child:
        print(json.dumps(run_mode(Path(args.project), args.child, args.workers)))
        return
    cores = os.cpu_count()
    print(f"machine: {cores} cores; {args.workers} Dask workers (1 thread each); seeds {args.seeds}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    if args.part in ("all", "wait"):
        n = len(args.wait_seeds.split(",")) * args.wait_configs
        print_table(f"GPU-like grid: {n} train + {n} inference cells (nodes wait: finetune {args.train_wait:g} s, "
                    f"generate {args.gen_wait:g} s, evaluate 0.2 s)",
                    wait_table(args), "Dask: timed once the local cluster is up; on fresh workers the run includes "
                    "each worker importing the project (once per worker process), a warm run (the same cluster's "
                    "second) does not")
    if args.part in ("all", "real"):
        print_table("reduced study grid (kedro run --pipelines=study, tiny model, CPU)", real_table(args),
                    "Dask: timed once the local cluster is up; the sequential run uses torch's default threads")


if __name__ == "__main__":
    main()
