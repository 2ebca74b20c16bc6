"""Safe loading: code shipped with a model folder runs only when asked; adapters are saved as safetensors,
never as pickles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.modules.style import StyleAlignmentModule

CONFIGURATION = """
from pathlib import Path
from transformers import Qwen2Config

Path({marker!r}).write_text("remote code ran")


class EvilConfig(Qwen2Config):
    model_type = "wuxia_evil"
"""

MODELING = """
from transformers import Qwen2ForCausalLM

from .configuration_evil import EvilConfig


class EvilForCausalLM(Qwen2ForCausalLM):
    config_class = EvilConfig
"""


def folder_with_remote_code(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model, but its config points (``auto_map``) at Python files in the folder that leave a
    marker file when imported."""
    folder, marker = tmp_path / "model", tmp_path / "marker.txt"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_evil.py").write_text(CONFIGURATION.format(marker=str(marker)))
    (folder / "modeling_evil.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="wuxia_evil", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_model_code_in_the_folder_is_refused_by_default(tiny_model_dir, tmp_path):
    folder, marker = folder_with_remote_code(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_base_model(str(folder))
    with pytest.raises(ValueError, match="trust_remote_code"):
        StyleAlignmentModule(model_name_or_path=str(folder)).configure_model()
    assert not marker.exists()


def test_model_code_runs_when_asked(tiny_model_dir, tmp_path):
    """The flag really reaches transformers (else the test above could pass for another reason).
    In a child process: transformers copies the code to HF_MODULES_CACHE (here under tmp_path) and
    imports it, which would leave the module in this test session's sys.modules."""
    folder, marker = folder_with_remote_code(tiny_model_dir, tmp_path)
    script = ("import sys; from wuxia_lightning.modeling.loading import load_base_model; "
              "print(type(load_base_model(sys.argv[1], trust_remote_code=True)).__name__)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "EvilForCausalLM"
    assert marker.read_text() == "remote code ran"


def test_style_module_keeps_remote_code_off_unless_asked(tiny_model_dir):
    assert StyleAlignmentModule(model_name_or_path=str(tiny_model_dir)).hparams.trust_remote_code is False


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def assert_no_pickles(folder: Path) -> None:
    """No file a loader would unpickle: by name, and by content (pickle protocol 2+ starts with 0x80,
    torch.save's zip format with PK)."""
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in PICKLE_SUFFIXES, path
            head = path.read_bytes()[:4]
            assert not head.startswith(b"\x80") and head != b"PK\x03\x04", path


def test_adapter_folder_holds_safetensors_and_no_pickles(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from wuxia_lightning.modeling.adapters import save_adapter_atomically
    from wuxia_lightning.pretrained.tokenizer import load_tokenizer

    module = StyleAlignmentModule(model_name_or_path=str(tiny_model_dir))
    module.configure_model()
    save_adapter_atomically(module.peft_model, "style", tmp_path / "style", load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style"})
    weights = load_file(tmp_path / "style" / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert_no_pickles(tmp_path / "style")
