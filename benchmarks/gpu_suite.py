"""The four benchmarks at the paper's scale in one run, for one CUDA machine (docs/performance.md).

    bash benchmarks/gpu_suite.sh                 # on the GPU machine: installs .whl/ if present, then runs this
    python -m benchmarks.gpu_suite --tiny        # the same steps at tiny sizes on a CPU (a test runs this)

Steps, each in its own process with its own time cap, in this order (a failure or timeout of one is reported and
the others still run):

1. ``environment``: python, torch, GPU, faiss (and whether it has GPU support), diffusers, transformers;
2. ``descriptors``: ``benchmarks/descriptor_speed.py`` (SSCD's shape, 256-px JPEGs; goal >= 5,000 images/s);
3. ``model``: a random-weight model of Stable Diffusion 2.1's shape saved in diffusers' format (for 4 and 5);
4. ``finetune``: ``benchmarks/finetune_speed.py`` at the paper's settings (goal >= 2x the plain loop);
5. ``generate``: ``benchmarks/generate_speed.py``, 50 DPM-Solver steps, guidance 7.5, batch 16 (goal >= 1.5x the
   pipeline called with the same batch);
6. ``selfjoin``: ``benchmarks/search_selfjoin.py`` on the GPU at 1M and 8M descriptors with what is left of the
   budget (a size predicted not to fit is reported as skipped).

Every table goes to stdout and, with the logs, to ``--out`` (default ``$OUT`` when set): ``suite.md`` (all tables
and a summary of what ran) and one ``<step>.log`` per step (stdout and stderr) — 7 files in all.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ENVIRONMENT = r"""
import os, platform, subprocess, sys
print(f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} cores")
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"bf16: {torch.cuda.is_bf16_supported()}")
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip())
except Exception as exc:
    print(f"nvidia-smi: {exc}")
for name in ("diffusers", "transformers", "numpy", "PIL", "torchvision"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
try:
    import faiss
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    print(f"faiss {faiss.__version__}, GPU support: {'yes' if gpu else 'no'}")
except Exception as exc:
    print(f"faiss: not importable ({type(exc).__name__}: {exc})")
"""

BUILD = (
    "import sys, time; t = time.perf_counter(); "
    "from copying_study.diffusion.reference_shapes import save_sd21_pipeline; "
    "folder = save_sd21_pipeline(sys.argv[1], size=sys.argv[2]); "
    "print(f'saved a random-weight {sys.argv[2]} SD 2.1-shaped model to {folder} in {time.perf_counter() - t:.0f} s')"
)


@dataclass
class Step:
    name: str
    argv: list[str]
    cap: float  # seconds at most
    needs: list[str] = field(default_factory=list)
    status: str = "not run"
    seconds: float = 0.0
    output: str = ""


def plan(tiny: bool, model_dir: str) -> list[Step]:
    """The steps and their commands: the paper's scale on CUDA, or tiny sizes on the CPU."""
    py = [sys.executable]
    if tiny:
        dev = ["--device", "cpu"]
        return [
            Step("environment", py + ["-c", ENVIRONMENT], 60),
            Step("descriptors", py + ["-m", "benchmarks.descriptor_speed", "--size", "tiny", "--n-images", "48",
                                      "--distinct", "8", "--image-size", "64", "--batch-size", "16"] + dev, 120),
            Step("model", py + ["-c", BUILD, model_dir, "tiny"], 120),
            Step("finetune", py + ["-m", "benchmarks.finetune_speed", "--config", "conf/paper/parameters_finetune.yml",
                                   "--base-model", model_dir, "--images", "8", "--resolution", "64", "--batch-size",
                                   "2", "--steps", "2", "--warmup", "2"] + dev, 180, ["model"]),
            Step("generate", py + ["-m", "benchmarks.generate_speed", "--model", model_dir, "--resolution", "64",
                                   "--n-images", "4", "--steps", "3", "--scheduler", "dpm", "--batch-sizes", "2",
                                   "--per-prompt-images", "1"] + dev, 120, ["model"]),
            Step("selfjoin", py + ["-m", "benchmarks.search_selfjoin", "--in-process", "--sizes", "2000,4000"] + dev,
                 120),
        ]
    dev = ["--device", "cuda"]
    return [
        Step("environment", py + ["-c", ENVIRONMENT], 60),
        Step("descriptors", py + ["-m", "benchmarks.descriptor_speed", "--n-images", "32768", "--batch-size", "256"]
             + dev, 150),
        Step("model", py + ["-c", BUILD, model_dir, "full"], 180),
        Step("finetune", py + ["-m", "benchmarks.finetune_speed", "--config", "conf/paper/parameters_finetune.yml",
                               "--base-model", model_dir, "--images", "64", "--steps", "10", "--warmup", "3"] + dev,
             200, ["model"]),
        Step("generate", py + ["-m", "benchmarks.generate_speed", "--model", model_dir, "--resolution", "256",
                               "--n-images", "32", "--steps", "50", "--scheduler", "dpm", "--guidance", "7.5",
                               "--batch-sizes", "16", "--per-prompt-images", "4"] + dev, 150, ["model"]),
        Step("selfjoin", py + ["-m", "benchmarks.search_selfjoin", "--sizes", "1000000,8000000"] + dev, 600),
    ]


def run_step(step: Step, cap: float, log: Path) -> None:
    """Run one step in its own process group, killed at ``cap`` seconds; keeps its output and status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COPYING_STUDY_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    print(f"\n=== {step.name} (at most {cap:.0f} s): {shlex.join(step.argv[1:])[:300]}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        fh.write(out)
    step.seconds = time.perf_counter() - t0
    step.output = out
    if timed_out:
        step.status = f"TIMED OUT after {cap:.0f} s (killed; tables printed before that are kept)"
    elif proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        step.status = f"FAILED (exit {proc.returncode}); last lines:\n```\n{tail}\n```"
    else:
        step.status = "ok"
    print(tables(step.output) or "(no table)", flush=True)
    print(f"--- {step.name}: {step.status.splitlines()[0]} in {step.seconds:.0f} s", flush=True)


def tables(output: str) -> str:
    """The lines of a step's output worth keeping in the summary: headers (#), table rows (|) and verdicts."""
    keep = ("#", "|", "goal", "agreement", "project one-off", "saved a random-weight", "python ", "torch ", "GPU",
            "faiss", "diffusers", "transformers", "numpy", "PIL", "torchvision", "NVIDIA")
    kept: list[str] = []
    for line in (line for line in output.splitlines() if line.startswith(keep)):
        if kept and kept[-1].startswith("|") != line.startswith("|"):
            kept.append("")  # a table ends (or starts) at a blank line in Markdown
        kept.append(line)
    return "\n".join(kept)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (a smoke test of this suite)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for suite.md and the logs (default $OUT)")
    ap.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    args = ap.parse_args(argv)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd21_shape_") as tmp:
        steps = plan(args.tiny, str(Path(tmp) / "sd21"))
        if args.only:
            wanted = set(args.only.split(","))
            steps = [s for s in steps if s.name in wanted or s.name in {n for t in steps if t.name in wanted
                                                                          for n in t.needs}]
        done = {}
        for step in steps:
            left = args.budget - (time.perf_counter() - start)
            missing = [n for n in step.needs if done.get(n) != "ok"]
            if missing:
                step.status = f"skipped: needs step {', '.join(missing)}, which did not succeed"
            elif left < 10:
                step.status = f"skipped: the budget of {args.budget:.0f} s is spent"
            else:
                cap = min(step.cap, left)
                if step.name == "selfjoin" and not args.tiny:
                    step.argv += ["--time-budget", f"{max(10.0, cap - 20):.0f}"]
                run_step(step, cap, out / f"{step.name}.log")
            done[step.name] = step.status
            if step.status.startswith("skipped"):
                print(f"\n=== {step.name}: {step.status}", flush=True)
    summary = render(steps, time.perf_counter() - start, args)
    (out / "suite.md").write_text(summary)
    print("\n" + summary, flush=True)
    print(f"(written to {out})", flush=True)
    return 0 if all(s.status == "ok" for s in steps) else 1


def render(steps: list[Step], seconds: float, args) -> str:
    lines = [f"# GPU suite{' (tiny sizes on the CPU: a smoke test, not a measurement)' if args.tiny else ''}",
             "", f"{len(steps)} steps in {seconds:.0f} s (budget {args.budget:.0f} s).", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status.splitlines()[0]} | {s.seconds:.0f} |" for s in steps]
    for s in steps:
        lines += ["", f"## {s.name}", ""] + ([s.status, ""] if s.status != "ok" else [])
        lines.append(tables(s.output) or "(no output)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
