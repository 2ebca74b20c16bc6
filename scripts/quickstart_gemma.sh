#!/usr/bin/env bash
# The whole pipeline on a real pretrained base, on a CPU: Gemma 3 270M (GGUF from the package registry,
# converted once), stage 1 → stage 2 → replies to the example prompts, the base's replies beside them.
# About half an hour on 2 cores; progress and ETA on the console. Outputs under outputs/gemma3-270m/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/pip install --quiet -e ".[gemma]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/wuxia fit --config configs/gemma3-270m_style.yaml
.venv/bin/wuxia fit --config configs/gemma3-270m_instruct.yaml
.venv/bin/wuxia predict --config configs/gemma3-270m_instruct.yaml --data.prompts scripts/example_prompts.txt --trainer.logger false
.venv/bin/python scripts/compare_replies.py --model outputs/gemma3-270m/stacked --prompts scripts/example_prompts.txt \
  --out outputs/gemma3-270m/base_vs_stacked.md
echo "stacked adapters and predictions: outputs/gemma3-270m/stacked (predictions.jsonl, summary.json)"
echo "the base's replies beside the trained model's: outputs/gemma3-270m/base_vs_stacked.md"
cat outputs/gemma3-270m/stacked/summary.json
