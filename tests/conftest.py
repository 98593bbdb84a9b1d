"""Shared fixtures: a tiny in-memory training set and a throw-away copy of the Kedro project."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from copying_study.utils.images import encode_png

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("COPYING_STUDY_NO_PROGRESS", "1")

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw_scene(shape: str, colour: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    bg = tuple(int(x) for x in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    c = COLOURS[colour]
    x0, y0 = rng.integers(2, size // 3, 2)
    x1, y1 = x0 + size // 2, y0 + size // 2
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=c)
    elif shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=c)
    else:
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=c)
    return img


def make_training_set(n: int = 24, size: int = 32, seed: int = 0, n_dup_clusters: int = 2, copies: int = 3):
    """A small table with the ``training_set`` schema: n distinct scenes + planted exact-copy clusters."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        shape, colour = SHAPES[i % len(SHAPES)], list(COLOURS)[(i // len(SHAPES)) % len(COLOURS)]
        img = draw_scene(shape, colour, rng, size)
        png = encode_png(img)
        caps = [f"a {colour} {shape}", f"a {shape} that is {colour}", f"{colour} {shape} on a background",
                f"picture of a {colour} {shape}", f"one {colour} {shape}"]
        rows.append({"png": png, "caption": caps[0], "captions": caps, "class_label": shape})
    out = []
    for i, r in enumerate(rows):
        cluster = i if i < n_dup_clusters else -1
        reps = copies if i < n_dup_clusters else 1
        for k in range(reps):
            out.append({
                "image_id": hashlib.sha256(f"test:{i}:{k}".encode()).hexdigest()[:16],
                "image": r["png"], "caption": r["caption"], "captions": list(r["captions"]),
                "class_label": r["class_label"], "source": "test", "file_name": f"{i}_{k}.png",
                "sha256": hashlib.sha256(r["png"]).hexdigest(), "width": size, "height": size,
                "planted_cluster": cluster,
            })
    return pd.DataFrame(out)


@pytest.fixture
def tiny_training_set() -> pd.DataFrame:
    return make_training_set()


#: a seconds-sized recipe for the embedded base model (the real build path, a toy budget): the project fixture's
#: conf uses it, so every end-to-end test finetunes from an embedded base it builds itself
TINY_BASE = {"n_images": 32, "steps": 4, "batch_size": 8, "lr_warmup_steps": 1,
             "autoencoder": {"steps": 4, "batch_size": 8},
             "tiny": {"unet_channels": [32, 64, 64], "unet_attention_levels": [False, True, True]}}


def use_tiny_base(conf: Path) -> None:
    """Point ``finetune.embedded_base`` of the copied ``conf/base`` at :data:`TINY_BASE`."""
    import yaml

    path = conf / "base" / "parameters_finetune.yml"
    params = yaml.safe_load(path.read_text())
    if params["finetune"].get("base_model") == "embedded":
        params["finetune"]["embedded_base"] = TINY_BASE
        path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(autouse=True)
def no_mlflow_run_left_active():
    """Every test leaves no MLflow run active in the process (a leaked run would take the next run's logging)."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        while mlflow.active_run() is not None:
            mlflow.end_run()
        pytest.fail(f"the test left MLflow run {run_id} active")


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's conf + pyproject in a temp dir, so runs write their data/ and mlflow.db there (the
    embedded base model's recipe shrunk to :data:`TINY_BASE`)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    use_tiny_base(project / "conf")
    (project / "conf" / "local").mkdir()
    (project / "data").mkdir()
    (project / "src").mkdir()  # bootstrap_project checks the source dir exists
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project


def run_kedro(project: Path, pipelines: list[str], params: dict | None = None, env: str = "base",
              load_versions: dict | None = None, runner=None):
    """Run pipelines through a KedroSession in ``project`` (with ``runner``, default Kedro's sequential one);
    returns the session's run outputs."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
        return session.run(pipeline_names=pipelines, load_versions=load_versions or {}, runner=runner)


def save_datasets(project: Path, datasets: dict) -> None:
    """Save ``datasets`` through the project's catalog, where the pipelines read them (as upstream stages would)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="base") as session:
        catalog = session.load_context().catalog
        for name, data in datasets.items():
            catalog.save(name, data)
