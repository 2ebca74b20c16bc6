#!/usr/bin/env bash
# The whole pipeline on a CPU, offline, in a few minutes: stage 1 (style adapter), stage 2 (instruct
# adapter stacked on it), then replies to the example prompts and a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/wuxia fit --config configs/quickstart_style.yaml
.venv/bin/wuxia fit --config configs/quickstart_instruct.yaml
.venv/bin/wuxia predict --config configs/quickstart_instruct.yaml --data.prompts scripts/example_prompts.txt
echo "stage-1 adapter: outputs/quickstart/style"
echo "stacked adapters and predictions: outputs/quickstart/stacked (predictions.jsonl, summary.json)"
cat outputs/quickstart/stacked/summary.json
