"""llama.cpp's ``convert_hf_to_gguf.py``, found or fetched at run time and run as a subprocess.

No llama.cpp code is committed here. The converter comes from one of two places:

- ``--converter PATH``: a llama.cpp checkout (a folder holding ``convert_hf_to_gguf.py``) or a downloaded
  llama-cpp-python sdist (``llama_cpp_python-*.tar.gz``);
- otherwise the llama-cpp-python sdist of :data:`LLAMA_CPP_PYTHON_VERSION`, downloaded once by pip into
  ``<cache>/wheels`` (where ``scripts/build_llama_cpp.sh`` keeps it too).

From an sdist only three pieces are kept, which must stay together: the script, its ``conversion/``
package and its ``gguf-py/`` (the script puts that ahead of the installed ``gguf``, so both coexist). They
are extracted once into ``<cache>/llama.cpp/<sdist name>``. Using the converter of the same release as the
llama.cpp that serves the file keeps writer and reader in step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import cache_root, staged_directory

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CONVERTER = "convert_hf_to_gguf.py"
VENDOR = "vendor/llama.cpp/"
CONVERTER_PIECES = (CONVERTER, "conversion/", "gguf-py/")
# What convert_hf_to_gguf.py --outtype writes for any model (tq1_0/tq2_0 only suit ternary models).
GGUF_TYPES = ("f16", "q8_0", "f32", "bf16")


def wheel_cache() -> Path:
    """Where the llama-cpp-python sdist and the wheel built from it are kept (shared with the build script)."""
    return cache_root() / "wheels"


def converter_dir(spec: str | os.PathLike | None = None) -> Path:
    """A folder holding ``convert_hf_to_gguf.py`` with ``conversion/`` and ``gguf-py/`` beside it."""
    if spec is not None:
        path = Path(spec).expanduser()
        if path.is_dir() and (path / CONVERTER).is_file():
            return path
        if path.is_file() and path.name.endswith(".tar.gz"):
            return extract_converter(path)
        raise UserInputError(f"--converter must be a llama.cpp folder holding {CONVERTER} or a llama-cpp-python "
                             "sdist (.tar.gz)", path=str(path))
    sdist = wheel_cache() / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    folder = cache_root() / "llama.cpp" / sdist.name.removesuffix(".tar.gz")
    if (folder / CONVERTER).is_file():
        return folder
    if not sdist.is_file():
        download_sdist(wheel_cache())
    return extract_converter(sdist)


def download_sdist(into: Path) -> None:
    """``pip download`` the llama-cpp-python source (77 MB), once."""
    print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (77 MB) into {into} for llama.cpp's "
          "GGUF converter (once; about 30 s)", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
               "--no-deps", "--no-binary", ":all:", "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserInputError(f"cannot download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} for its GGUF converter "
                             f"({last_line(result.stderr)}); pass --converter PATH (a llama.cpp checkout or the "
                             "sdist .tar.gz)", path=str(into))


def extract_converter(sdist: Path) -> Path:
    """The converter's three pieces from ``sdist`` into ``<cache>/llama.cpp/<sdist name>`` (once)."""
    folder = cache_root() / "llama.cpp" / sdist.name.removesuffix(".tar.gz")
    if (folder / CONVERTER).is_file():
        return folder
    print(f"extracting llama.cpp's {CONVERTER} from {sdist} into {folder}", file=sys.stderr, flush=True)
    try:
        # One streaming pass ("r|gz"): random access would decompress the 77 MB archive again per seek.
        with tarfile.open(sdist, "r|gz") as archive, staged_directory(folder) as staging:
            for member in archive:
                if piece := converter_piece(member.name):
                    member.name = piece
                    archive.extract(member, staging, filter="data")
            if not (staging / CONVERTER).is_file():
                raise UserInputError(f"holds no {VENDOR}{CONVERTER}: not a llama-cpp-python sdist", path=str(sdist))
    except FileExistsError:  # another process extracted it meanwhile
        pass
    except (tarfile.TarError, OSError) as error:
        raise UserInputError(f"cannot read the sdist: {error}", path=str(sdist)) from error
    return folder


def converter_piece(name: str) -> str:
    """``llama_cpp_python-X/vendor/llama.cpp/conversion/x.py`` → ``conversion/x.py``; '' for anything else."""
    _, _, inside = name.partition("/" + VENDOR)
    return inside if inside.startswith(CONVERTER_PIECES) else ""


def run_converter(converter: Path, model_dir: Path, outfile: Path, gguf_type: str, name: str) -> None:
    """``convert_hf_to_gguf.py model_dir --outtype gguf_type --outfile outfile`` in a subprocess; its failure
    becomes one line naming the model folder."""
    command = [sys.executable, str(converter / CONVERTER), str(model_dir), "--outtype", gguf_type,
               "--outfile", str(outfile), "--model-name", name]
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}  # use its own gguf-py
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not outfile.is_file():
        raise UserInputError(f"llama.cpp's {CONVERTER} failed: {last_line(result.stderr or result.stdout)}",
                             path=str(model_dir))


def last_line(text: str) -> str:
    """The last non-empty line of a subprocess's output (the exception, for a Python traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
