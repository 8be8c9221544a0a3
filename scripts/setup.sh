#!/usr/bin/env bash
# Creates .venv and installs alive-exp with everything tests and benchmarks need.
# torch is installed only when the venv has none: install your CUDA build first to keep it
# (e.g. .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # a pinned CPU-capable default; an unpinned torch would pull a multi-GB CUDA build
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, transformers, peft, pytorch_lightning, mlflow, hydra; print('alive-exp ready: torch', torch.__version__, '| transformers', transformers.__version__)"
