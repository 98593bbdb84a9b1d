"""The console of a `kedro run`: no Python warning, one line per node, no per-dataset lines unless --verbose,
progress bars only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

from copying_study.console import ConsoleFilter
from copying_study.utils.progress import progress, progress_enabled


def kedro_cli(project, *args: str, verbose: bool = False):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COPYING_STUDY_VERBOSE": "1" if verbose else "0"}
    env.pop("COPYING_STUDY_NO_PROGRESS", None)  # as a user runs it (the subprocess has no terminal: no bars)
    proc = subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


def test_a_pipeline_run_through_the_cli_prints_no_warning_and_one_line_per_node(kedro_project):
    out = kedro_cli(kedro_project, "--pipelines=ingest")
    assert "Warning" not in out, out  # UserWarning, DeprecationWarning, FutureWarning, ... (not log level WARNING)
    assert "Loading data from" not in out and "Saving data to" not in out, out
    assert "[transformers]" not in out and "Completed 1 out of" not in out, out
    running = [line for line in out.splitlines() if "Running node:" in line]
    # Kedro's "Running node" line names the node without its stage namespace
    # the log_*_metrics nodes (metrics copied to MLflow) run without a line
    assert [line.split("Running node: ")[1] for line in running] == ["ingest_training_set", "caption_training_set"]
    assert "Pipeline execution completed successfully" in out
    assert "has started" in out and "Registering new custom resolver" not in out  # kedro-mlflow's run, one line
    assert len(out.splitlines()) <= 10, out

    verbose = kedro_cli(kedro_project, "--pipelines=ingest", "--to-nodes=ingest.ingest_training_set", verbose=True)
    assert "Loading data from params:ingest" in verbose and "Saving data to training_set" not in verbose
    assert "Saving data to control_set" in verbose and "Completed 1 out of 1 tasks" in verbose, verbose


def test_the_filter_keeps_warnings_and_shortens_running_node_lines():
    keep = ConsoleFilter()

    def record(name, msg, args=(), level=logging.INFO):
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    running = record("kedro.pipeline.node", "Running node: %s", ("evaluate.summarise: summarise([a;b]) -> [c]",))
    assert keep.filter(running) and running.getMessage() == "Running node: evaluate.summarise"
    assert not keep.filter(record("kedro.runner.sequential_runner", "Completed node: %s", ("x",)))
    for name in ("finetune.log_finetune_metrics: metrics_history([finetune_metrics]) -> [finetune_metrics_mlflow]",
                 "log_ingest_metrics"):  # a metrics output copied to MLflow: no line
        assert not keep.filter(record("kedro.pipeline.node", "Running node: %s", (name,)))
    for name in ("evaluate.plot_replication_gallery", "dedup_plot_sizes"):  # figures: listed in the summary
        assert not keep.filter(record("kedro.pipeline.node", "Running node: %s", (name,)))
    assert keep.filter(record("kedro.pipeline.node", "Running node: %s", ("generate.generate_images",)))
    assert not keep.filter(record("kedro_mlflow.framework.hooks.mlflow_hook",
                                  "Registering new custom resolver: 'km.random_name'"))
    assert keep.filter(record("kedro.runner.sequential_runner", "Completed node: %s", ("x",), logging.WARNING))
    keep.verbose = True
    assert keep.filter(record("kedro.runner.sequential_runner", "Completed %d out of %d tasks", (1, 2)))


def test_progress_bars_are_drawn_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("COPYING_STUDY_NO_PROGRESS", raising=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled()
    assert list(progress(range(3), desc="x")) == [0, 1, 2] and sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_enabled()
    monkeypatch.setenv("COPYING_STUDY_NO_PROGRESS", "1")
    assert not progress_enabled()


def test_loading_a_model_draws_no_library_progress_bars_off_a_terminal(tmp_path, monkeypatch):
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    from copying_study.diffusion.models import build_tiny_pipeline, load_pipeline
    from tests.finetune.helpers import TEST_TINY

    build_tiny_pipeline(["a red circle"], resolution=16, seed=0, **TEST_TINY).save_pretrained(tmp_path / "m")
    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()
    monkeypatch.setenv("COPYING_STUDY_NO_PROGRESS", "1")  # as off a terminal
    load_pipeline(str(tmp_path / "m"))
    assert not diffusers_logging.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
