"""GGUF bases given as files: a file that is not GGUF, a truncated one, or one of an architecture transformers
cannot load is one line naming the file, exit code 2, and nothing written (no output folder, no cached
model). A good file is converted once and found again by its hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import run_cli

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.pretrained.gguf import file_sha256, gguf_file_of, is_gguf_spec


def write_gguf(path: Path, architecture: str) -> Path:
    """A small, well-formed GGUF file (one tensor) of ``architecture``, written with the gguf package."""
    gguf = pytest.importorskip("gguf", reason="the 'gguf' package is not installed (pip install -e .[gemma])")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("kind", ["not_gguf", "truncated", "unknown_architecture"])
def test_bad_gguf_base_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("WUXIA_CACHE", str(tmp_path / "cache"))  # run_cli passes os.environ on
    model = tmp_path / "model.gguf"
    if kind == "not_gguf":
        model.write_text("{\"model_type\": \"qwen2\"}\n", encoding="utf-8")
    else:
        write_gguf(model, "llama" if kind == "truncated" else "mamba9")
        if kind == "truncated":  # a download cut short: the header promises tensors the file no longer has
            model.write_bytes(model.read_bytes()[:200])
    result = run_cli("fit", "--config", "configs/quickstart_style.yaml", "--model.model_name_or_path", str(model),
                     f"--trainer.default_root_dir={tmp_path / 'root'}", "--trainer.logger=false",
                     f"--model.output_dir={tmp_path / 'out'}", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(model) in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    gguf_cache = tmp_path / "cache" / "gguf"
    assert not gguf_cache.exists() or not [p for p in gguf_cache.iterdir() if p.is_dir()]  # no model cached


def test_gguf_specs_and_the_hash_index(tmp_path):
    (tmp_path / "one").mkdir()
    model = write_gguf(tmp_path / "one" / "m.gguf", "llama")
    assert is_gguf_spec(str(model)) and is_gguf_spec(str(model.parent)) and not is_gguf_spec("Qwen/Qwen2.5-7B")
    assert gguf_file_of(model.parent) == model
    (model.parent / "n.gguf").write_bytes(model.read_bytes())
    with pytest.raises(UserInputError, match="holds 2 .gguf files"):
        gguf_file_of(model.parent)
    import hashlib

    assert file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest() == file_sha256(model)
    model.write_bytes(model.read_bytes() + b"\0")  # changed: size differs, hashed again
    assert file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
