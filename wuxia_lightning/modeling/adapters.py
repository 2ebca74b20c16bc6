"""LoRA adapters: creation, freezing, and atomic saving in peft's own layout."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from wuxia_lightning.io import staged_directory, strict_json

ALL_LINEAR = "all-linear"


def lora_config(r: int, alpha: int, dropout: float, target_modules: str | Sequence[str] = ALL_LINEAR,
                trainable_token_ids: Sequence[int] = ()):
    """LoRA on ``target_modules``; ``trainable_token_ids`` also trains those embedding rows (new tokens)."""
    from peft import LoraConfig

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    tokens = {"embed_tokens": list(trainable_token_ids)} if trainable_token_ids else None
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM", trainable_token_indices=tokens)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def adapter_parameter_names(model: torch.nn.Module, adapter: str) -> set[str]:
    """Names of the LoRA tensors of one adapter (peft puts the adapter name in each of them)."""
    return {name for name, _ in model.named_parameters() if "lora_" in name and f".{adapter}." in name}


def restore_trainable(model: torch.nn.Module, names: set[str]) -> None:
    """Make exactly ``names`` trainable. peft flips requires_grad on leaving ``disable_adapter()`` and on
    ``set_adapter``; we re-assert the set we meant instead of trusting either (PITFALLS.md)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def save_adapter_atomically(peft_model, adapter_name: str, out_dir: str | Path, tokenizer=None,
                            manifest: dict | None = None) -> Path:
    """Write one adapter so that ``out_dir`` is a plain peft adapter folder, replacing it atomically."""
    out_dir = Path(out_dir)
    with staged_directory(out_dir, replace=True) as staging:
        peft_model.save_pretrained(staging, selected_adapters=[adapter_name])
        # peft writes adapters other than "default" to <dir>/<name>/; flatten to a plain adapter folder.
        nested = staging / adapter_name
        if nested.is_dir():
            for item in nested.iterdir():
                os.replace(item, staging / item.name)
            nested.rmdir()
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if manifest is not None:
            (staging / "wuxia_manifest.json").write_text(strict_json(manifest, indent=2), encoding="utf-8")
    return out_dir
