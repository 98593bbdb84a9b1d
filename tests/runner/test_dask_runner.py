"""``copying_study.runner.DaskRunner`` on toy pipelines and a real 2-worker ``LocalCluster``: grouping by namespace,
the unsaved hand-off check, retries after an error and after a killed worker, a group that fails for good, and an
unreachable scheduler."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from copying_study.runner import (
    DaskRunError,
    DaskRunner,
    check_handoffs,
    critical_path_priority,
    plan_groups,
    resources_for,
    unsaved_handoffs,
)
from tests.conftest import REPO
from tests.runner import nodes

VERSION = "2026-12-04T00.00.00.000Z"
# the toy pipelines name namespaced datasets outside their namespace, and one builds a namespace cycle on purpose
pytestmark = pytest.mark.filterwarnings("ignore:One or more dataset names contain:UserWarning",
                                        "ignore:Namespace 'a' is interrupted:UserWarning")


def pipeline(cells: dict[str, list[Node]]) -> Pipeline:
    """``make`` outside any namespace, then one namespace per cell (``cell.<node>``)."""
    head = Pipeline([Node(nodes.make_table, "params:n", "table", name="make")])
    return sum((Pipeline(ns_nodes, namespace=ns, inputs={"table"},
                         parameters={i for n in ns_nodes for i in n.inputs if i.startswith("params:")})
                for ns, ns_nodes in cells.items()), head)


def versioned(tmp: Path, name: str, kind=ParquetDataset, version: str = VERSION):
    suffix = ".json" if kind is JSONDataset else ".parquet"
    return kind(filepath=str(tmp / f"{name}{suffix}"), version=Version(None, version))


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes that import this repository's tests (PYTHONPATH)."""
    from distributed import LocalCluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), old]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture
def project(kedro_project):
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(kedro_project)
    return kedro_project


def test_groups_are_top_level_namespaces_in_dependency_order():
    p = pipeline({"a": [Node(nodes.double, "table", "doubled", name="double"),
                        Node(nodes.total, "doubled", "sum", name="total")],
                  "b": [Node(nodes.total, "table", "sum", name="total")]})
    p = p + Pipeline([Node(nodes.total, "a.doubled", "final", name="final")])
    groups = plan_groups(p)
    names = [g.name for g in groups]
    assert names.index("make") < names.index("a") < names.index("final")
    assert names.index("make") < names.index("b")
    assert critical_path_priority(groups) == {"make": 2, "a": 1, "b": 0, "final": 0}  # a feeds final: first
    a = next(g for g in groups if g.name == "a")
    assert [n.name for n in a.nodes] == ["a.double", "a.total"]  # in order, on one worker
    assert a.outputs == {"a.doubled", "a.sum"}
    assert sorted(a.dependencies) == ["make"]


def test_a_group_with_a_gpu_tagged_node_asks_for_a_gpu():
    p = pipeline({"train": [Node(nodes.double, "table", "model", name="fit", tags=["gpu"]),
                            Node(nodes.total, "model", "report", name="report")],
                  "plot": [Node(nodes.total, "table", "figure", name="plot")]})
    groups = {g.name: g for g in plan_groups(p)}
    assert groups["train"].gpu and not groups["plot"].gpu
    assert resources_for(groups["train"], ask_gpu=True) == {"GPU": 1}
    assert resources_for(groups["train"], ask_gpu=False) is None  # no worker declares a GPU: run anywhere
    assert resources_for(groups["plot"], ask_gpu=True) is None
    from copying_study.pipelines.finetune.pipeline import create_pipeline as finetune
    from copying_study.pipelines.generate.pipeline import create_pipeline as generate

    tagged = {n.name for n in (finetune() + generate()).nodes if "gpu" in n.tags}
    assert tagged == {"finetune_model", "generate_images"}


def test_a_cycle_between_namespaces_is_refused():
    p = Pipeline([Node(nodes.double, "table", "x", name="one", namespace="a"),
                  Node(nodes.double, "x", "y", name="two", namespace="b"),
                  Node(nodes.double, "y", "z", name="three", namespace="a")])
    with pytest.raises(DaskRunError, match="cycle"):
        plan_groups(p)


def test_a_memory_dataset_between_groups_is_refused_by_name(tmp_path):
    p = pipeline({"a": [Node(nodes.double, "table", "doubled", name="double")]})
    catalog = DataCatalog(datasets={"table": MemoryDataset(), "a.doubled": versioned(tmp_path, "doubled")})
    problems = unsaved_handoffs(plan_groups(p), catalog)
    assert problems == {"table": ("make", ["a"])}
    with pytest.raises(DaskRunError, match=r"table: made by make, read by a"):
        check_handoffs(plan_groups(p), catalog)
    catalog["table"] = versioned(tmp_path, "table")
    check_handoffs(plan_groups(p), catalog)  # saved to storage: allowed


def test_unreachable_scheduler_fails_fast_naming_the_address(project):
    start = time.perf_counter()
    p = pipeline({})
    catalog = DataCatalog(datasets={"table": versioned(project, "table"), "params:n": MemoryDataset(3)})
    with pytest.raises(DaskRunError, match=r"tcp://127\.0\.0\.1:9"):
        DaskRunner(address="tcp://127.0.0.1:9", timeout=3).run(p, catalog, run_id=VERSION)
    assert time.perf_counter() - start < 15


def test_bad_runner_params_are_refused():
    with pytest.raises(ValueError, match="n_workers"):
        DaskRunner(n_workers=0)
    with pytest.raises(ValueError, match="gpu_resources"):
        DaskRunner(gpu_resources="maybe")


def toy_catalog(tmp: Path, names: list[str], n: int = 5, **raw) -> DataCatalog:
    params = {f"params:{k}": MemoryDataset(v) for k, v in {"n": n, **raw}.items()}
    return DataCatalog(datasets={**{name: versioned(tmp, name.replace(".", "_")) for name in names}, **params})


def saved(tmp: Path, name: str) -> Path:
    stem = name.replace(".", "_")
    return tmp / f"{stem}.parquet" / VERSION / f"{stem}.parquet"


def test_cells_run_on_the_workers_and_save_under_the_run_version(project, cluster):
    p = pipeline({"a": [Node(nodes.double, "table", "doubled", name="double"),
                        Node(nodes.double, "doubled", "quadrupled", name="again")],
                  "b": [Node(nodes.double, "table", "doubled", name="double")]})
    # a.doubled stays in memory inside its cell: allowed, it never leaves the worker
    catalog = toy_catalog(project, ["table", "a.quadrupled", "b.doubled"])
    runner = DaskRunner(address=cluster.scheduler_address)
    runner.run(p, catalog, run_id=VERSION)
    assert pd.read_parquet(saved(project, "a.quadrupled"))["x"].tolist() == [0, 4, 8, 12, 16]
    assert pd.read_parquet(saved(project, "b.doubled"))["x"].tolist() == [0, 2, 4, 6, 8]
    assert sorted(runner.last_run["groups"]) == ["a", "b", "make"]
    from copying_study.settings import HOOKS  # the workers' dataset records reach the driver's MLflow hook

    assert HOOKS[0].record["datasets_saved"]["a.quadrupled"] == VERSION


def test_a_group_that_raises_is_retried_alone(project, cluster):
    marker = project / "fail_once.marker"
    p = pipeline({"a": [Node(nodes.double, "table", "doubled", name="double"),
                        Node(nodes.fail_once, ["doubled", "params:marker"], "checked", name="check")],
                  "b": [Node(nodes.double, "table", "doubled", name="double")]})
    catalog = toy_catalog(project, ["table", "a.doubled", "a.checked", "b.doubled"], marker=str(marker))
    DaskRunner(address=cluster.scheduler_address, retries=1).run(p, catalog, run_id=VERSION)
    # the second attempt removed the first one's a.doubled (a versioned dataset refuses to overwrite) and made it
    assert marker.read_text() == "attempted"
    assert pd.read_parquet(saved(project, "a.checked"))["x"].tolist() == [0, 2, 4, 6, 8]


def test_a_killed_worker_has_its_group_rescheduled(project, cluster):
    marker = project / "die_once.marker"
    p = pipeline({"a": [Node(nodes.double, "table", "doubled", name="double"),
                        Node(nodes.die_once, ["doubled", "params:marker"], "checked", name="check")]})
    catalog = toy_catalog(project, ["table", "a.doubled", "a.checked"], marker=str(marker))
    DaskRunner(address=cluster.scheduler_address, retries=0).run(p, catalog, run_id=VERSION)
    assert marker.exists()
    assert pd.read_parquet(saved(project, "a.checked"))["x"].tolist() == [0, 2, 4, 6, 8]


def test_a_group_that_fails_for_good_leaves_no_partial_version(project, cluster):
    p = pipeline({"bad": [Node(nodes.double, "table", "doubled", name="double"),
                          Node(nodes.always_fail, "doubled", "never", name="fail")],
                  "good": [Node(nodes.double, "table", "doubled", name="double")]})
    p = p + Pipeline([Node(nodes.total, "bad.never", "after", name="after")])
    catalog = toy_catalog(project, ["table", "bad.doubled", "bad.never", "good.doubled", "after"])
    with pytest.raises(DaskRunError) as info:
        DaskRunner(address=cluster.scheduler_address, retries=1).run(p, catalog, run_id=VERSION)
    message = str(info.value)
    assert "bad: node bad.fail: ValueError: this cell always fails" in message
    assert "after: not run" in message
    assert not saved(project, "bad.doubled").exists()  # saved by the failed group's first node, then removed
    assert not saved(project, "bad.doubled").parent.exists()
    assert saved(project, "good.doubled").exists()  # the independent group finished
