#!/usr/bin/env bash
# Runs the four benchmarks at the paper's scale on one CUDA machine (benchmarks/gpu_suite.py, docs/performance.md).
#
# Assumes, on that machine: a `python3` (or $PYTHON) with a CUDA build of torch, transformers, tokenizers, accelerate,
# safetensors, huggingface_hub, pandas, pyyaml, pillow, numpy, tqdm; no network. What it lacks (diffusers, faiss)
# travels as wheels in .whl/ (made here by benchmarks/gpu_wheels.sh), installed into /tmp/site. The project itself is
# used from src/ (PYTHONPATH), not installed. Extra arguments go to gpu_suite.py (e.g. --budget 540, --only finetune).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    echo "gpu_suite.sh: installing the wheels in .whl/ failed (see above)"; exit 3
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "gpu_suite.sh: no .whl/ folder: using the packages already installed"
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 COPYING_STUDY_NO_PROGRESS=1 KEDRO_DISABLE_TELEMETRY=1
exec "$PY" -m benchmarks.gpu_suite "$@"
