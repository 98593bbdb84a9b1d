#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of torch and the project.
# GPU users: set TORCH_SPEC to the CUDA build you want, e.g.
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first: the CPU wheel (never a multi-GB CUDA build unless TORCH_SPEC asks for one) ...
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
# ... then the project, whose torch requirement the installed build already satisfies.
.venv/bin/python -m pip install --quiet -e ".[dev]"
# torch-fidelity for the offline FID-network check only (python -m copying_study.metrics.fid_check): kept out of
# site-packages: its package imports torchvision, whose PyPI build does not load with the CPU torch, and once
# installed it makes torchmetrics' image metrics import it.
if [ ! -d .venv/fid-check/torch_fidelity ]; then
  .venv/bin/python -m pip install --quiet --no-deps --target .venv/fid-check torch-fidelity==0.4.0
fi
.venv/bin/python -c "import torch, diffusers, kedro, faiss, mlflow; print('set up: torch', torch.__version__, '| cuda', torch.cuda.is_available())"
# The embedded base model every default finetune starts from (docs/finetune.md "The embedded base model"): pretrained
# once, cached under data/06_models/embedded_base/ (a no-op when it is there). CI and the tests do not need it
# (they build a seconds-sized one): COPYING_STUDY_SKIP_BASE=1 skips it.
if [ -z "${COPYING_STUDY_SKIP_BASE:-}" ]; then
  .venv/bin/copying-study build-base
fi
