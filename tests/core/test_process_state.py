"""The library leaves process-wide state alone: no matplotlib backend switch, no pyplot figures, no environment
variables; and its results do not depend on Python's string-hash seed. One list of mitigations per purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> str:
    run_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_figures_are_made_without_pyplot_and_keep_the_callers_backend():
    code = """
import sys, json
import matplotlib
matplotlib.use("svg")                      # a notebook's own choice
import numpy as np, pandas as pd
from copying_study.metrics.plots import similarity_histogram
from copying_study.pipelines.dedup_clusters.plots import cluster_size_histogram
from copying_study.pipelines.finetune.nodes import plot_sample_grids
figs = [similarity_histogram({"a": [0.1, 0.5, 0.9]}),
        cluster_size_histogram(pd.DataFrame({"cluster_id": [0, 0, 1], "cluster_size": [2, 2, 1]}), 2, "t"),
        *plot_sample_grids({10: np.zeros((16, 48, 3), np.uint8)}).values()]
import io
for f in figs:
    f.savefig(io.BytesIO(), format="png")
print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules}))
"""
    out = json.loads(_python(code))
    assert out == {"backend": "svg", "pyplot": False}


def test_seed_everything_sets_no_environment_variable(monkeypatch):
    from copying_study.utils.seeding import seed_everything

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    before = dict(os.environ)
    seed_everything(7, deterministic=False)
    assert "PYTHONHASHSEED" not in os.environ  # it would act only on child processes, never on this one
    assert dict(os.environ) == before


def test_vocabulary_tokenizer_and_training_plan_do_not_depend_on_the_hash_seed():
    code = """
import json, hashlib
from copying_study.data.captions import vocabulary, random_captions
from copying_study.diffusion.models import train_caption_tokenizer
caps = [f"a {c} {s} on a {b} background" for c in ("red", "green", "blue") for s in ("circle", "square")
        for b in ("dark", "light", "striped")]
vocab = vocabulary(caps)
tok = train_caption_tokenizer(caps, vocab_size=600)
rand = random_captions([f"id{i}" for i in range(20)], vocab, 3)
blob = json.dumps([vocab, sorted(tok.get_vocab().items()), rand], sort_keys=True)
print(hashlib.sha256(blob.encode()).hexdigest())
"""
    assert _python(code, PYTHONHASHSEED="1") == _python(code, PYTHONHASHSEED="2")


def test_one_list_of_text_mitigations_for_training_and_generation():
    from copying_study.data import captions
    from copying_study.diffusion import sample

    assert sample.TEXT_MITIGATIONS is captions.TEXT_MITIGATIONS
    assert set(captions.INFERENCE_MITIGATIONS) == {"none", "gn", *captions.TEXT_MITIGATIONS,
                                                   *captions.SAMPLER_MITIGATIONS}
    assert set(captions.TRAIN_MITIGATIONS) == {"none", "gn", *captions.TEXT_MITIGATIONS, "mc", "wen"}
