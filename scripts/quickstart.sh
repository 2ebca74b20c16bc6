#!/usr/bin/env bash
# The whole pipeline on a CPU, offline, in a few minutes: stage 1 (style adapter), stage 2 (instruct
# adapter stacked on it), then replies to the example prompts and a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/wuxia fit --config configs/quickstart_style.yaml
.venv/bin/wuxia fit --config configs/quickstart_instruct.yaml
.venv/bin/wuxia predict --config configs/quickstart_instruct.yaml --data.prompts scripts/example_prompts.txt --trainer.logger false
latest() { dirname "$(ls -d "lightning_logs/$1"/version_*/metrics.csv | sort -V | tail -n 1)"; }
.venv/bin/python scripts/make_report.py "$(latest quickstart_style)"
.venv/bin/python scripts/make_report.py "$(latest quickstart_instruct)" --predictions outputs/quickstart/stacked
echo "stage-1 adapter: outputs/quickstart/style"
echo "stacked adapters and predictions: outputs/quickstart/stacked (predictions.jsonl, summary.json)"
echo "reports: $(latest quickstart_style)/report/report.md and $(latest quickstart_instruct)/report/report.md"
cat outputs/quickstart/stacked/summary.json
