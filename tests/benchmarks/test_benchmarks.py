"""The benchmark scripts at tiny sizes on the CPU, so that they never rot (smoke tests: no timing is asserted).

The GPU suite (``benchmarks/gpu_suite.py``) runs the same scripts at the paper's scale; ``--tiny`` runs its whole
sequence of processes here (slow)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import descriptor_speed, finetune_speed, generate_speed, search_selfjoin

REPO = Path(__file__).resolve().parents[2]


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_descriptor_speed_tiny(capsys):
    result = descriptor_speed.main(["--size", "tiny", "--n-images", "40", "--distinct", "8", "--image-size", "64",
                                    "--batch-size", "16", "--workers", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [r[0].split(" (")[0] for r in rows[1:]] == ["plain DataLoader loop", "project `SSCDDescriptor.encode`"]
    assert result["project_img_s"] > 0 and result["plain_img_s"] > 0
    assert result["min_cosine"] > 0.9999  # both float32 on the CPU: the same descriptors


def test_finetune_speed_tiny_reference_model(capsys):
    result = finetune_speed.main(["--config", "conf/paper/parameters_finetune.yml", "--reference", "sd21-tiny",
                                  "--images", "6", "--resolution", "64", "--batch-size", "2", "--steps", "1",
                                  "--warmup", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "sd21-tiny shape" in out and "text encoder trained: False" in out and "64 px, batch 2" in out
    assert set(result["plain_s_per_step"]) == {"fp32"} and result["project_s_per_step"] > 0
    assert re.search(r"\| plain diffusers-style \(float32.*\*\*[0-9.]+x\*\* \|", out)


def test_generate_speed_tiny_reference_model_agrees_with_the_pipeline(capsys):
    generate_speed.main(["--size", "sd21-tiny", "--resolution", "64", "--n-images", "3", "--steps", "2",
                         "--scheduler", "dpm", "--batch-sizes", "2", "--per-prompt-images", "1", "--device", "cpu"])
    rows = {r[0]: r for r in table_rows(capsys.readouterr().out)[1:]}
    assert set(rows) == {"diffusers `StableDiffusionPipeline`, one prompt per call (paper code)",
                         "diffusers `StableDiffusionPipeline`, the same batch per call", "project `Sampler`"}
    # the sampler computes what the pipeline computes from the same per-image noise: equal up to rounding
    assert int(rows["project `Sampler`"][-1]) <= 2


def test_selfjoin_gpu_table_code_on_the_cpu(capsys):
    search_selfjoin.main(["--in-process", "--device", "cpu", "--sizes", "1500,3000,500000", "--time-budget", "30"])
    out = capsys.readouterr().out
    checks = re.findall(r"project (\d+), baseline (\d+)", out)
    assert len(checks) == 2 and all(a == b for a, b in checks) and "DIFFER" not in out
    assert "| 500,000 | (skipped) | predicted" in out


@pytest.mark.slow
def test_gpu_suite_tiny_runs_every_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--tiny", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "suite.md").read_text()
    for step in ("environment", "descriptors", "model", "finetune", "generate", "selfjoin"):
        assert f"| {step} | ok |" in summary
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and "suite.md" in files  # what the device tool brings back from $OUT
