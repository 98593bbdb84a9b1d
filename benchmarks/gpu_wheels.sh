#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels that benchmarks/gpu_suite.sh installs on a GPU machine that has
# no network: the packages its image lacks, at the versions of this checkout's .venv, for CPython 3.12 on x86-64
# Linux. `.whl/` is git-ignored; carry it to the machine (device tool: carry [".whl"]); about 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}
DIFFUSERS=$("$VENV_PY" -c 'import diffusers; print(diffusers.__version__)')
FAISS=$("$VENV_PY" -c 'import faiss; print(faiss.__version__)')
IMD=$("$VENV_PY" -c 'import importlib.metadata as m; print(m.version("importlib_metadata"))')
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$DIFFUSERS" "faiss-cpu==$FAISS" "importlib_metadata==$IMD"
ls -la .whl
