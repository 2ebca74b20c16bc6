"""LoRA adapters: creation, which are active and trainable, the frozen reference, atomic saving in peft's
own layout."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    """Names of the tensors one adapter trains: its LoRA tensors and its embedding rows, if any (peft puts
    the adapter name in each: ``….lora_A.<adapter>.weight``, ``….trainable_tokens_delta.<adapter>``)."""
    return {name for name, _ in model.named_parameters()
            if ("lora_" in name and f".{adapter}." in name) or name.endswith(f"trainable_tokens_delta.{adapter}")}


def restore_trainable(model: torch.nn.Module, names: set[str]) -> None:
    """Make exactly ``names`` trainable. peft flips requires_grad on leaving ``disable_adapter()`` and on
    ``set_adapter``; we re-assert the set we meant instead of trusting either (PITFALLS.md)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def activate(peft_model, adapters: Sequence[str]) -> None:
    """Make every adapter in ``adapters`` active. peft's ``set_adapter`` on the LoRA model takes a list
    but also marks them all trainable; callers re-assert the trainable set afterwards.

    peft 0.21 refuses two adapters with token rows on one embedding ("Only one adapter can be set at a
    time", its own TODO says non-overlapping rows are fine): the style's infill rows and the instruct
    adapter's turn-end row. Its layer computes several adapters' rows (and refuses overlapping ones), so
    the check is passed with the first and every such wrapper then gets all of its adapters."""
    from peft.utils.other import TrainableTokensWrapper

    check = TrainableTokensWrapper.check_set_adapter
    TrainableTokensWrapper.check_set_adapter = lambda self, names: check(self, _first_with_rows(self, names))
    try:
        peft_model.base_model.set_adapter(list(adapters))
    finally:
        TrainableTokensWrapper.check_set_adapter = check
    for module in peft_model.modules():
        if isinstance(module, TrainableTokensWrapper):
            with_rows = [name for name in adapters if name in module.token_adapter.trainable_tokens_delta]
            if len(with_rows) > 1:
                module.set_adapter(with_rows)


def _first_with_rows(wrapper, names):
    """``names`` cut to its first adapter that has rows in ``wrapper`` (all of them when none has)."""
    if isinstance(names, str):
        return names
    with_rows = [name for name in names if name in wrapper.token_adapter.trainable_tokens_delta]
    return with_rows[:1] or list(names)


@contextmanager
def frozen_reference(peft_model, adapters: Sequence[str] = ()) -> Iterator[torch.nn.Module]:
    """The reference model of a KL term, as the same network: every adapter off (``adapters`` empty: the
    base model) or only ``adapters`` on (stage 2's style-only reference), and no gradients. On exit the
    adapters that were active and exactly the parameters that were trainable are back: peft re-enables
    gradients on leaving ``disable_adapter()`` and on ``set_adapter`` (PITFALLS.md)."""
    trainable = trainable_names(peft_model)
    active = list(peft_model.base_model.active_adapters)
    try:
        with torch.no_grad():
            if adapters:
                activate(peft_model, adapters)
                yield peft_model
            else:
                with peft_model.disable_adapter():
                    yield peft_model
    finally:
        if adapters:
            activate(peft_model, active)
        restore_trainable(peft_model, trainable)


def gathered(state_dict: dict | None) -> dict:
    """``save_pretrained`` keyword arguments: the adapter tensors when the caller gathered them (FSDP2),
    else none, and peft reads the model itself.

    Never the embedding layers: peft saves the whole resized embedding (and a tied head) when tokens were
    added — 1.36 GB for Gemma 3's 262k × 640 — although the added rows are already saved as the adapter's
    trainable-token rows, which replace them whenever the adapter is active; the rest is the base's."""
    return {"save_embedding_layers": False, **({"state_dict": state_dict} if state_dict is not None else {})}


@contextmanager
def adapters_without_token_rows() -> Iterator[None]:
    """peft 0.21 can neither save nor load an adapter that trains no token rows (stage 2's ``instruct``) in a
    model where another adapter does (``style`` on a base that got infill tokens): every
    ``TrainableTokensWrapper`` asks for that adapter's rows and raises KeyError. Within this block such a
    wrapper saves, loads and merges nothing for adapters it holds no rows of — exactly what there is."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils.other import TrainableTokensWrapper

    save, load_map = TrainableTokensWrapper.adapter_state_dict, TrainableTokensWrapper.adapter_state_dict_load_map
    merge = TrainableTokensLayer.merge

    def has_rows(wrapper, adapter_name: str) -> bool:
        layer = wrapper.token_adapter
        return layer.tied_adapter is not None or adapter_name in layer.token_indices

    TrainableTokensWrapper.adapter_state_dict = lambda self, name, state: save(self, name, state) \
        if has_rows(self, name) else {}
    TrainableTokensWrapper.adapter_state_dict_load_map = lambda self, name: load_map(self, name) \
        if has_rows(self, name) else {}
    TrainableTokensLayer.merge = lambda self, safe_merge=False, adapter_names=None: merge(
        self, safe_merge, [n for n in (adapter_names or self.active_adapters) if n in self.token_indices])
    try:
        yield
    finally:
        TrainableTokensWrapper.adapter_state_dict, TrainableTokensWrapper.adapter_state_dict_load_map = save, load_map
        TrainableTokensLayer.merge = merge


def save_adapter_atomically(peft_model, adapter_name: str, out_dir: str | Path, tokenizer=None,
                            manifest: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write one adapter so that ``out_dir`` is a plain peft adapter folder, replacing it atomically.
    ``state_dict``: the adapter tensors when the model's own are shards (FSDP2: ``full_adapter_state``)."""
    out_dir = Path(out_dir)
    with staged_directory(out_dir, replace=True) as staging:
        peft_model.save_pretrained(staging, selected_adapters=[adapter_name], **gathered(state_dict))
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
