"""Two LoRA adapters on one base: the frozen stage-1 ``style`` under a trainable stage-2 ``instruct``.

peft's ``from_pretrained`` loads one adapter; a stacked folder needs both loaded *and* active, which no
plain transformers/peft call does. ``load_stacked`` is the one call that restores a stacked folder
exactly as it was trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import staged_directory, strict_json
from wuxia_lightning.modeling.adapters import activate, adapters_without_token_rows, gathered
from wuxia_lightning.modeling.loading import Precision, Quantization, load_base_model
from wuxia_lightning.modeling.token_rows import copy_free_token_rows
from wuxia_lightning.pretrained.gguf import gguf_provenance
from wuxia_lightning.pretrained.tokenizer import is_single_token, load_saved_tokenizer
from wuxia_lightning.tokens import STOP_TOKENS

STYLE, INSTRUCT = "style", "instruct"
MANIFEST = "wuxia_manifest.json"


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserInputError(f"no {MANIFEST}: not a wuxia_lightning output folder", path=str(folder))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise UserInputError(f"not valid JSON ({getattr(exc, 'msg', exc)}); was it edited by hand?",
                             path=str(path), line=line) from exc
    _check_manifest(manifest, folder, path)
    return manifest


def _check_manifest(manifest: object, folder: Path | str, path: Path) -> None:
    """A hand-edited manifest fails here, naming the field, not later as a KeyError inside loading."""
    if not isinstance(manifest, dict):
        raise UserInputError(f"must be a JSON object, got {type(manifest).__name__}", path=str(path))
    if not isinstance(manifest.get("base_model"), str) or not manifest["base_model"]:
        raise UserInputError("missing or not a non-empty string (the base model name)", path=str(path),
                             field="base_model")
    adapters = manifest.get("adapters")
    if not (isinstance(adapters, list) and adapters and all(isinstance(a, str) and a for a in adapters)):
        raise UserInputError('missing or not a non-empty list of adapter names (e.g. ["style", "instruct"])',
                             path=str(path), field="adapters")
    stage_one = adapters == [STYLE] and (Path(folder) / "adapter_config.json").exists()
    for name in [] if stage_one else adapters:
        if not (Path(folder) / name / "adapter_config.json").exists():
            raise UserInputError(f"lists adapter '{name}' but {Path(folder) / name} is not an adapter folder "
                                 "(no adapter_config.json)", path=str(path), field="adapters")


def attach_style(base: torch.nn.Module, style_dir: str | Path, trainable: bool = False):
    """Wrap ``base`` with the stage-1 adapter under the name ``style``."""
    from peft import PeftModel

    style_dir = Path(style_dir)
    if not (style_dir / "adapter_config.json").exists():
        raise UserInputError("not a peft adapter folder (no adapter_config.json); pass a stage-1 "
                             "--model.output_dir as --model.style_adapter", path=str(style_dir))
    check_same_base(base, style_dir)
    model = PeftModel.from_pretrained(base, str(style_dir), adapter_name=STYLE, is_trainable=trainable)
    copy_free_token_rows(model)  # adapters loaded later share these layers, and so this forward
    return model


def check_same_base(base: torch.nn.Module, adapter_dir: Path) -> None:
    """An adapter trained on another base loads without complaint when shapes happen to match (or fails
    deep inside peft when they do not); name both models instead."""
    config_path = adapter_dir / "adapter_config.json"
    try:
        trained_on = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UserInputError(f"unreadable adapter config: {exc}", path=str(config_path)) from exc
    given = getattr(getattr(base, "config", None), "_name_or_path", None)
    if not trained_on or not given or _same_model(trained_on, given):
        return
    named = _manifest_base(adapter_dir)  # the name the user typed in stage 1, e.g. 'tiny-qwen2' or a .gguf
    trained_label = f"'{named}' ({trained_on})" if named and named != trained_on else f"'{trained_on}'"
    given_source = gguf_provenance(given)
    given_label = f"'{given_source['file']}' (GGUF sha256 {given_source['sha256']})" if given_source else f"'{given}'"
    raise UserInputError(f"the style adapter was trained on base model {trained_label} but the base model given "
                         f"is {given_label} (--model.model_name_or_path); use the adapter's base model",
                         path=str(config_path), field="base_model_name_or_path")


def _manifest_base(folder: Path) -> str | None:
    """The manifest's "base_model" (with the GGUF file's hash when it was one), for the message only: a
    missing or broken manifest is no error here."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        named, source = manifest.get("base_model"), manifest.get("base_source")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(named, str):
        return None
    if isinstance(source, dict) and source.get("sha256"):
        return f"{named} (GGUF sha256 {source['sha256']})"
    return named


def _same_model(a: str, b: str) -> bool:
    """Same folder, or same final name: a local copy of a hub model ('/models/Qwen2.5-7B' vs
    'Qwen/Qwen2.5-7B') counts as the same. Tiny models resolve to cache folders named by arch + tokenizer."""
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def save_stacked(peft_model, out_dir: str | Path, tokenizer, manifest: dict, state_dict: dict | None = None) -> Path:
    """Both adapters in peft's layout (``style/``, ``instruct/``), tokenizer, generation config, manifest.
    ``state_dict``: the adapter tensors when the model's own are shards (FSDP2: ``full_adapter_state``)."""
    out_dir = Path(out_dir)
    with staged_directory(out_dir, replace=True) as staging:
        with adapters_without_token_rows():
            peft_model.save_pretrained(str(staging), selected_adapters=manifest["adapters"], **gathered(state_dict))
        tokenizer.save_pretrained(str(staging))
        generation_config(tokenizer).save_pretrained(str(staging))
        (staging / MANIFEST).write_text(strict_json(manifest, indent=2, default=str),
                                        encoding="utf-8")
        for extra in ("predictions.jsonl", "summary.json"):  # keep earlier predictions that live in the folder
            if (out_dir / extra).exists():
                shutil.copy2(out_dir / extra, staging / extra)
    return out_dir


def generation_config(tokenizer):
    """Stop on the end-of-turn token as well as EOS: a Qwen2.5 base config's eos is <|endoftext|> (151643)
    while chat turns end with <|im_end|> (151645); a Gemma base's eos is <eos> and turns end with <end_of_turn>."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            do_sample=False, max_new_tokens=256)


def stop_token_ids(tokenizer) -> list[int]:
    """<|im_end|> / <end_of_turn> (end of a chat turn), <|endoftext|> (a Qwen2.5 base config's eos) and the
    tokenizer's eos.

    A token counts only if it is in the vocabulary as itself (``is_single_token``).
    """
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids.update(tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS if is_single_token(tokenizer, token))
    return sorted(ids)


def load_stacked(folder: str | Path, *, model_name_or_path: str | None = None, dtype: Precision = "float32",
                 quantization: Quantization = "none", style_scale: float = 1.0, instruct_scale: float = 1.0,
                 trust_remote_code: bool = False):
    """Restore a stacked (or stage-1) output folder: base + its adapters, all active, frozen, eval mode.

    Returns (peft_model, tokenizer). ``model_name_or_path`` overrides the base named in the manifest
    (e.g. a local copy of the hub model). ``style_scale`` / ``instruct_scale`` multiply each adapter's
    LoRA delta (1 = as trained): the style-strength knob, see ``set_adapter_scales``.
    ``trust_remote_code``: run code shipped with the base model; off unless asked.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    base_name = model_name_or_path or manifest["base_model"]
    try:
        base = load_base_model(base_name, tokenizer_name_or_path=manifest.get("tokenizer"), dtype=dtype,
                               quantization=quantization, trust_remote_code=trust_remote_code)
    except OSError as error:  # a missing / unreachable base model is the user's to fix
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"cannot load the base model {base_name!r}: {reason}; pass --base with a local "
                             "copy of it", path=str(folder)) from error
    adapters = manifest["adapters"]
    if adapters == [STYLE] and (folder / "adapter_config.json").exists():  # a stage-1 output folder
        model = attach_style(base, folder)
    else:
        model = attach_style(base, folder / adapters[0])
        with adapters_without_token_rows():
            for name in adapters[1:]:
                model.load_adapter(str(folder / name), adapter_name=name)
        copy_free_token_rows(model)  # a later adapter's rows may sit in a layer the style had none in
        activate(model, adapters)
    set_adapter_scales(model, {STYLE: style_scale, INSTRUCT: instruct_scale})
    model.requires_grad_(False)
    model.eval()
    return model, load_saved_tokenizer(folder, trust_remote_code=trust_remote_code)


def is_style_only(manifest: dict) -> bool:
    """A stage-1 folder (one style adapter): it continues text, it does not chat."""
    return manifest.get("stage") == "style" or manifest.get("adapters") == [STYLE]


def set_adapter_scales(peft_model, scales: dict[str, float]) -> None:
    """Scale each named adapter's LoRA delta to ``factor`` × its trained size (alpha / r, or alpha / √r
    with rsLoRA), in every LoRA layer; adapters a model does not have are ignored.

    Both adapters stay active and their deltas still add, so style × 1.5 pushes replies further toward the
    novels without retraining, and style × 0 is the instruct adapter alone. peft's ``set_scale`` resets
    from the configured alpha / r, so calling this again replaces, never compounds, an earlier scale.
    """
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for adapter, factor in scales.items():
                module.set_scale(adapter, factor)
