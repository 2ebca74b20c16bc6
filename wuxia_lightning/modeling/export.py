"""Exact exports of a trained folder for serving: one concatenated LoRA adapter, or a merged model.

Servers such as vLLM and SGLang apply one LoRA adapter per request, while a stacked folder needs two
active at once. Two LoRAs on the same layer add up, ``s1·B1·A1·x + s2·B2·A2·x``, and that sum *is* one
LoRA of rank r1 + r2: ``A = [A1; A2]`` (stacked along the rank) and ``B = [s1·B1, s2·B2]``. Folding
each adapter's scaling (alpha / r times the user's scale) into B lets the exported adapter declare
``lora_alpha == r`` (scaling 1), so no server-side scaling convention can change the result. Averaging
the adapters instead (peft's "linear" combination) adds cross terms B1·A2 and is not exact.

Zero rows of A / columns of B add nothing, which makes two things exact as well: a module only one
adapter targets (the other contributes zeros), and padding the rank up to a size vLLM accepts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import staged_directory, strict_json
from wuxia_lightning.modeling.adapters import adapters_without_token_rows
from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE, generation_config, read_manifest

# The LoRA ranks vLLM's --max-lora-rank accepts; an adapter of any other rank must be padded up.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PAD_TARGETS = {"vllm": VLLM_LORA_RANKS}
EXPORT_MANIFEST = "wuxia_export.json"
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
Format = Literal["adapter", "merged"]
ExportDtype = Literal["bfloat16", "float16", "float32"]

# Config entries whose non-default value means the adapter is more than plain ``B·A·x·alpha/r`` on the
# targeted layers, so a concatenated plain LoRA would not reproduce it.
NOT_PLAIN_LORA = {
    "use_rslora": "rsLoRA scales by alpha/√r, which a plain LoRA config cannot declare",
    "use_dora": "DoRA rescales each weight's magnitude, which is not a sum of low-rank terms",
    "trainable_token_indices": "it trains embedding rows, which a LoRA-only server does not load",
    "modules_to_save": "it saves full copies of modules, which a LoRA-only server does not load",
    "rank_pattern": "per-module ranks are not supported by this export",
    "alpha_pattern": "per-module alphas are not supported by this export",
    "target_parameters": "it adapts raw parameters, not linear layers",
    "lora_bias": "it trains a bias on the LoRA B layer",
}


@dataclass(frozen=True)
class LoraPart:
    """One saved adapter with the user's strength factor for it."""

    name: str
    config: dict
    weights: dict[str, torch.Tensor]
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """The factor peft multiplies B·A·x by: alpha / r, times the user's scale."""
        return self.scale * self.config["lora_alpha"] / self.rank


@dataclass(frozen=True)
class ExportResult:
    out: Path
    info: dict


# ------------------------------------------------------------------------------------- reading folders

def adapter_dirs(folder: Path, manifest: dict) -> dict[str, Path]:
    """Adapter name -> its peft folder, for a stage-1 folder (the folder itself) or a stacked one."""
    adapters = list(manifest["adapters"])
    if adapters == [STYLE] and (folder / ADAPTER_CONFIG).exists():
        return {STYLE: folder}
    return {name: folder / name for name in adapters}


def read_lora(name: str, path: Path, scale: float = 1.0) -> LoraPart:
    """Config and tensors of one saved adapter, refused when it is not a plain LoRA."""
    from safetensors.torch import load_file

    config_path, weights_path = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_path.exists() or not weights_path.exists():
        raise UserInputError(f"adapter {name!r} has no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}", path=str(path))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    check_plain_lora(config, str(config_path))
    return LoraPart(name, config, load_file(str(weights_path)), scale)


def check_plain_lora(config: Mapping, where: str) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise UserInputError(f"not a LoRA adapter ({config.get('peft_type')}); cannot export it as one",
                             path=where)
    for key, why in NOT_PLAIN_LORA.items():
        if config.get(key):
            raise UserInputError(f"{key} is set: {why}, so it cannot be exported exactly as one LoRA "
                                 "adapter; use --format merged", path=where, field=key)
    if config.get("bias", "none") != "none":
        raise UserInputError("the adapter trains biases, which a LoRA-only server does not load; "
                             "use --format merged", path=where, field="bias")


def split_key(key: str, where: str) -> tuple[str, str]:
    """``<module>.lora_A.weight`` -> (``<module>``, ``A``); anything else (embedding LoRA, saved modules)
    has no place in the concatenation, so it is refused rather than dropped."""
    for kind in ("A", "B"):
        suffix = f".lora_{kind}.weight"
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    raise UserInputError(f"unexpected tensor {key!r}: only linear-layer LoRA weights can be exported",
                         path=where)


def by_module(part: LoraPart) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in part.weights.items():
        module, kind = split_key(key, part.name)
        modules.setdefault(module, {})[kind] = tensor
    incomplete = [module for module, pair in modules.items() if set(pair) != {"A", "B"}]
    if incomplete:
        raise UserInputError(f"adapter {part.name!r} lacks lora_A or lora_B for {incomplete[0]}")
    return modules


# --------------------------------------------------------------------------------------- concatenation

def concatenate(parts: list[LoraPart], dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], int]:
    """One LoRA equal to the sum of ``parts``: (state dict with peft's key names, total rank).

    The arithmetic is done in float32 and cast once at the end, so folding the scaling into B rounds
    only once. A module missing from an adapter gets zero rows/columns for it (it adds nothing there).
    """
    per_part = [by_module(part) for part in parts]
    rank = sum(part.rank for part in parts)
    state: dict[str, torch.Tensor] = {}
    for module in sorted(set().union(*per_part)):
        a_blocks, b_blocks = [], []
        in_features, out_features = module_shape(module, per_part)
        for part, modules in zip(parts, per_part, strict=True):
            pair = modules.get(module)
            if pair is None:
                a_blocks.append(torch.zeros(part.rank, in_features))
                b_blocks.append(torch.zeros(out_features, part.rank))
                continue
            check_rank(part, module, pair)
            a_blocks.append(pair["A"].float())
            b_blocks.append(pair["B"].float() * part.scaling)
        state[f"{module}.lora_A.weight"] = torch.cat(a_blocks, dim=0).to(dtype).contiguous()
        state[f"{module}.lora_B.weight"] = torch.cat(b_blocks, dim=1).to(dtype).contiguous()
    return state, rank


def module_shape(module: str, per_part: list[dict[str, dict[str, torch.Tensor]]]) -> tuple[int, int]:
    """(in_features, out_features) of ``module``, read from any adapter that targets it."""
    pair = next(modules[module] for modules in per_part if module in modules)
    return pair["A"].shape[1], pair["B"].shape[0]


def check_rank(part: LoraPart, module: str, pair: Mapping[str, torch.Tensor]) -> None:
    if pair["A"].shape[0] != part.rank or pair["B"].shape[1] != part.rank:
        raise UserInputError(f"adapter {part.name!r}: {module} does not have the configured rank {part.rank}")


def padded_rank(rank: int, allowed: tuple[int, ...] = VLLM_LORA_RANKS) -> int:
    """The smallest allowed rank >= ``rank``."""
    for candidate in allowed:
        if candidate >= rank:
            return candidate
    raise UserInputError(f"total LoRA rank {rank} exceeds the largest rank vLLM accepts ({allowed[-1]}); "
                         "export --format merged instead")


def pad_rank(state: Mapping[str, torch.Tensor], rank: int, target: int) -> dict[str, torch.Tensor]:
    """Zero rows of A and zero columns of B up to ``target``: B·A is unchanged."""
    extra = target - rank
    padded = {}
    for key, tensor in state.items():
        if key.endswith(".lora_A.weight"):
            padded[key] = torch.cat([tensor, tensor.new_zeros(extra, tensor.shape[1])], dim=0)
        else:
            padded[key] = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], extra)], dim=1)
    return padded


def target_modules(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Module names as peft records them (``model.layers.0.self_attn.q_proj``), from the tensor keys."""
    prefix = "base_model.model."
    names = {split_key(key, "export")[0] for key in state}
    return sorted(name[len(prefix):] if name.startswith(prefix) else name for name in names)


# ---------------------------------------------------------------------------------------------- export

def export_model(folder: str | Path, out: str | Path, *, fmt: Format, dtype: ExportDtype = "bfloat16",
                 style_scale: float = 1.0, instruct_scale: float = 1.0, pad_for: str | None = None,
                 base: str | None = None, overwrite: bool = False) -> ExportResult:
    """Export ``folder`` (stage-1 or stacked) to ``out`` as one LoRA adapter or as a merged model."""
    folder, out = Path(folder), Path(out)
    replace = check_target(out, folder, overwrite)  # before any slow work
    manifest = read_manifest(folder)
    scales = {STYLE: style_scale, INSTRUCT: instruct_scale}
    info = {"format": fmt, "source": str(folder.resolve()), "stage": manifest.get("stage"),
            "base_model": base or manifest["base_model"], "base_source": manifest.get("base_source"), "dtype": dtype,
            "trained_quantization": manifest.get("training", {}).get("quantization", "none")}
    if fmt == "adapter":
        return export_adapter(folder, out, manifest, info, scales, pad_for, replace)
    if pad_for is not None:
        raise UserInputError("--pad-rank-for applies to --format adapter only", field="pad-rank-for")
    return export_merged(folder, out, manifest, info, scales, replace)


def check_target(out: Path, source: Path, overwrite: bool) -> bool:
    """Whether ``out`` is to be replaced; refuses a non-empty one without ``overwrite`` and any ``out``
    that holds the source folder, whose replacement would delete the model being exported."""
    if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
        raise UserInputError("--out must not be the --model folder or contain it", path=str(out))
    if not out.exists():
        return False
    if not out.is_dir():
        raise UserInputError("--out exists and is not a folder", path=str(out))
    if any(out.iterdir()) and not overwrite:
        raise UserInputError("output folder already exists and is not empty; not overwriting it "
                             "(pass --overwrite or choose another --out)", path=str(out))
    return True


def export_adapter(folder: Path, out: Path, manifest: dict, info: dict, scales: dict[str, float],
                   pad_for: str | None, replace: bool) -> ExportResult:
    parts = [read_lora(name, path, scales.get(name, 1.0)) for name, path in adapter_dirs(folder, manifest).items()]
    tokenizer = export_tokenizer(folder)
    check_base_vocabulary(info["base_model"], len(tokenizer))
    state, rank = concatenate(parts, getattr(torch, info["dtype"]))
    final_rank = padded_rank(rank, PAD_TARGETS[pad_for]) if pad_for else rank
    if final_rank != rank:
        state = pad_rank(state, rank, final_rank)
    info.update(adapters=[describe(part) for part in parts], rank=rank, exported_rank=final_rank,
                padded_for=pad_for)
    with staged_directory(out, replace=replace) as staging:
        save_lora(staging, state, final_rank, info["base_model"])
        save_serving_files(staging, tokenizer, info)
    return ExportResult(out, info)


def describe(part: LoraPart) -> dict:
    return {"name": part.name, "r": part.rank, "lora_alpha": part.config["lora_alpha"], "scale": part.scale,
            "folded_scaling": part.scaling}


def save_lora(staging: Path, state: Mapping[str, torch.Tensor], rank: int, base: str) -> None:
    """A plain peft adapter folder: lora_alpha = r, so the scaling is 1 (it is folded into B)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=target_modules(state),
                        bias="none", task_type="CAUSAL_LM", inference_mode=True)
    config.base_model_name_or_path = base
    config.save_pretrained(str(staging))
    save_file(dict(state), str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def check_base_vocabulary(base: str, vocabulary: int) -> None:
    """A LoRA adapter is served on the unmodified base: refuse when the folder's tokenizer has tokens the
    base's embedding lacks (training resized it), since no LoRA server would resize it."""
    from transformers import AutoConfig

    from wuxia_lightning.pretrained.tiny import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(base))
    except (OSError, ValueError):  # base not reachable here: the adapter does not need it to be written
        return
    size = getattr(config.get_text_config(), "vocab_size", None)
    if size is not None and vocabulary > size:
        raise UserInputError(f"the tokenizer has {vocabulary} tokens but the base model's embedding only "
                             f"{size}: training added tokens, so the adapter alone cannot serve on the base; "
                             "use --format merged", path=base)


def export_merged(folder: Path, out: Path, manifest: dict, info: dict, scales: dict[str, float],
                  replace: bool) -> ExportResult:
    """Base loaded un-quantised (a QLoRA folder merges into the full-precision base: merging into 4-bit
    weights would round the result, peft issue 2321), adapters at their scales, merged, saved."""
    from wuxia_lightning.modeling.stacking import load_stacked

    model, _ = load_stacked(folder, model_name_or_path=info["base_model"], dtype=info["dtype"],
                            quantization="none", style_scale=scales[STYLE], instruct_scale=scales[INSTRUCT])
    adapters = list(manifest["adapters"])
    # Name the adapters explicitly: merging only the "current" one would silently drop the style adapter.
    with adapters_without_token_rows():
        merged = model.merge_and_unload(safe_merge=True, adapter_names=adapters)
    merged.config.use_cache = True  # load_base_model turns it off for training; servers read config.json
    info.update(adapters=[{"name": name, "scale": scales.get(name, 1.0)} for name in adapters])
    tokenizer = export_tokenizer(folder)
    with staged_directory(out, replace=replace) as staging:
        merged.generation_config = generation_config(tokenizer)
        merged.save_pretrained(str(staging))
        save_serving_files(staging, tokenizer, info)
    return ExportResult(out, info)


def export_tokenizer(folder: Path):
    """The folder's tokenizer with a chat template (a stage-1 folder's base tokenizer may have none)."""
    from wuxia_lightning.pretrained.tokenizer import ensure_chat_template, load_saved_tokenizer

    tokenizer = load_saved_tokenizer(folder)
    ensure_chat_template(tokenizer)
    return tokenizer


def save_serving_files(staging: Path, tokenizer, info: dict) -> None:
    """Tokenizer + chat template, a generation config that stops at <|im_end|>, and the export manifest."""
    tokenizer.save_pretrained(str(staging))
    generation_config(tokenizer).save_pretrained(str(staging))
    (staging / EXPORT_MANIFEST).write_text(strict_json(info, indent=2), encoding="utf-8")
