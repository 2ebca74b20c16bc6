#!/usr/bin/env bash
# One prepared GPU check: the fused loss against the naive one and Liger's, then 20 stage-1 steps through
# `wuxia fit` and HF Trainer + peft on a Qwen2.5-0.5B-shaped random model (benchmarks/gpu_check.py says what).
#   bash benchmarks/gpu_check.sh OUT_DIR                 # on a CUDA machine: ≤ 8 minutes on one H100
#   bash benchmarks/gpu_check.sh OUT_DIR --device cpu    # reduced sizes, marked so (what CI runs)
# Nothing is fetched from a model hub. Python packages the machine lacks come from wheels carried in .whl/
# (for a machine without network: fill it with benchmarks/gpu_wheels.sh) or else from the package registry;
# liger-kernel is optional: without it its rows say why.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--device cpu]}
shift
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/wuxia-gpu-check-site .whl/*.whl
  export PYTHONPATH=/tmp/wuxia-gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
need = {"jieba": "jieba", "jsonargparse": "jsonargparse[signatures]", "opencc": "opencc", "peft": "peft",
        "lightning": "lightning", "torchmetrics": "torchmetrics", "transformers": "transformers",
        "liger_kernel": "liger-kernel"}
print(" ".join(pip for module, pip in need.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ] && [[ " $* " == *" --device cpu "* ]]; then
  missing=${missing//liger-kernel/}  # the CPU smoke run does not pull triton (~160 MB) for one row
fi
if [ -n "${missing// /}" ]; then
  echo "installing: $missing"
  # liger-kernel pulls triton; on a CPU-only machine or without a registry it may fail: the check goes on.
  "$PYTHON" -m pip install -q $missing || echo "could not install all of: $missing (going on without them)"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
"$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
