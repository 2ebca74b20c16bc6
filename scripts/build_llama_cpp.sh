#!/usr/bin/env bash
# Build llama-cpp-python (llama.cpp compiled from its sdist: ~5.5 min on 2 idle cores) once into a wheel
# cache, then install it from there. Optional: only the GGUF export tests need it (they skip without it).
#
# The sdist is kept beside the wheel: `scripts/export.py --format gguf` takes llama.cpp's converter from
# it, so writer (converter) and reader (the llama.cpp that loads the file) come from the same release.
# The wheel is portable (GGML_NATIVE=OFF: an AVX2/FMA baseline) because a -march=native wheel kept in a
# cache can SIGILL on another CPU; LLAVA (multimodal) is not needed. pip's own wheel cache ignores
# CMAKE_ARGS, hence --no-cache-dir and our own folder, keyed by version through the file names.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PY=${PYTHON:-.venv/bin/python}
WHEELS=${WUXIA_CACHE:-$HOME/.cache/wuxia_lightning}/wheels
SDIST="$WHEELS/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$WHEELS"
if [ ! -f "$SDIST" ]; then
  echo "downloading the llama-cpp-python $VERSION sdist (77 MB) into $WHEELS" >&2
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WHEELS"
fi
if ! compgen -G "$WHEELS/llama_cpp_python-$VERSION-*.whl" >/dev/null; then
  echo "building llama-cpp-python $VERSION into $WHEELS (about 5-6 min on 2 idle cores)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
    "$PY" -m pip wheel --quiet --no-deps --no-cache-dir "$SDIST" -w "$WHEELS"
fi
"$PY" -m pip install --quiet --find-links "$WHEELS" "llama-cpp-python==$VERSION"
"$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'installed')"
