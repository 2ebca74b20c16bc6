#!/usr/bin/env bash
# Fill .whl/ with the wheels benchmarks/gpu_check.sh needs on a GPU machine that reaches no package registry
# (Python 3.12, x86_64; torch, transformers, peft, lightning and torchmetrics are expected there already).
# Run it here, where pip reaches the registry (23 MB); .whl/ is git-ignored, so name it among the paths carried
# to the GPU machine, where gpu_check.sh installs it into /tmp and puts it on PYTHONPATH.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl jsonargparse docstring-parser typeshed-client opencc liger-kernel
"$PYTHON" -m pip wheel --quiet --no-deps -w .whl jieba   # an sdist only; pure Python, so the wheel fits 3.12
ls -la .whl
