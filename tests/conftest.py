"""Shared fixtures: paths to the shared data, tokenizers and tiny models built offline."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
QWEN_TOKENIZER = SHARED / "fixtures" / "qwen2.5-tokenizer"
SAMPLE_TEXT = (
    "第一回　寒江夜雨\n"
    "剑光一闪，那人已然倒地。血溅三尺，惨叫之声响彻云霄。竟是江湖第一高手！\n"
    "他便拔剑而起，却不知敌人早已离去。只见长街尽头，一骑绝尘而来，乃是峨眉派的弟子。\n"
    "老者抚须笑道：「少侠何必如此？江湖之大，岂无容身之处乎？」说罢，竟自拂袖而去。\n"
)


# Third-party console lines that carry no information for our users (issue 13): never printed.
NOISE = ("Skipping publisher trust check", "gemm_4bit_forward", "litlogger", "is_gradient_checkpointing` is "
         "deprecated and will", "LeafSpec", "Building prefix dict", "Loading model cost",
         "Prefix dict has been built")


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package), imported once per session."""
    module_name = f"wuxia_scripts_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def strict_loads(text: str):
    """``json.loads`` that refuses NaN / Infinity / -Infinity, as JavaScript's and most other parsers do."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present: the shared data folder (../shared) is needed for this test")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny models and token caches go to a per-session folder, never the user's ~/.cache."""
    os.environ.setdefault("WUXIA_CACHE", str(tmp_path_factory.mktemp("wuxia_cache")))
    os.environ["HF_HUB_OFFLINE"] = "1"


# Written by merely importing and running Python: not something a test chose to write.
BYTECODE = ("__pycache__/", ".pytest_cache/", ".ruff_cache/")


def checkout_status() -> set[str] | None:
    """``git status --porcelain`` of the checkout, ignored files included (run outputs such as
    lightning_logs/ and outputs/ are git-ignored), one entry per file; None without git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    result = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--",
                             ".", ":!.venv"], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return {line for line in result.stdout.splitlines() if not any(part in line for part in BYTECODE)}


@pytest.fixture(scope="session", autouse=True)
def _checkout_untouched():
    """Tests write only under tmp_path: the checkout's status is the same after the session as before.

    (Edits made to the checkout by someone else during the session show up here too.)"""
    before = checkout_status()
    yield
    after = checkout_status()
    if before is None or after is None:
        return
    added, removed = sorted(after - before), sorted(before - after)
    assert not added and not removed, f"the test session changed the checkout: new {added}, gone {removed}"


@pytest.fixture(scope="session")
def small_tokenizer():
    """A byte-level BPE tokenizer trained here, with Qwen's special tokens and ChatML template."""
    from wuxia_lightning.pretrained.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer([SAMPLE_TEXT] * 4, vocab_size=400)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(require_shared(QWEN_TOKENIZER)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 model saved with save_pretrained, tokenizer trained on the shipped sample corpus."""
    from wuxia_lightning.pretrained.tiny import resolve_model_path

    return Path(resolve_model_path("tiny-qwen2"))


# ---- trained-looking adapter folders on the tiny model (scripts, chat page) ----------------------
def randomise_lora_b(model, adapter: str, std: float = 0.2) -> None:
    """LoRA B starts at zero (a no-op adapter); random B makes the adapter change the outputs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and f".{adapter}." in name:
                param.normal_(std=std)


@pytest.fixture(scope="module")
def style_folder(tiny_model_dir, tmp_path_factory) -> Path:
    """A stage-1 output folder, saved the way StyleAlignmentModule saves it."""
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import lora_config, save_adapter_atomically
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.pretrained.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(8, 16, 0.0), adapter_name="style")
    randomise_lora_b(model, "style")
    out = tmp_path_factory.mktemp("stage1") / "style"
    save_adapter_atomically(model, "style", out, load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    return out


@pytest.fixture(scope="module")
def stacked_folder(tiny_model_dir, style_folder, tmp_path_factory) -> Path:
    """A stage-2 folder: the style adapter plus an `instruct` adapter with random non-zero B."""
    from peft import PeftModel

    from wuxia_lightning.modeling.adapters import activate, lora_config
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.modeling.stacking import save_stacked
    from wuxia_lightning.pretrained.tokenizer import ensure_chat_template, load_tokenizer

    torch.manual_seed(1)
    model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(style_folder),
                                      adapter_name="style")
    model.add_adapter("instruct", lora_config(8, 16, 0.0))
    randomise_lora_b(model, "instruct")
    activate(model, ["style", "instruct"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ensure_chat_template(tokenizer)
    out = tmp_path_factory.mktemp("stage2") / "stacked"
    save_stacked(model, out, tokenizer, {"stage": "instruct", "base_model": str(tiny_model_dir),
                                         "adapters": ["style", "instruct"], "adapter_mode": "stacked",
                                         "chat_template": tokenizer.chat_template})
    return out
