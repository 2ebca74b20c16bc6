"""Loading base models and tokenizers: hub id, local folder or a tiny offline model; optional 4-bit."""

from __future__ import annotations

import os
from typing import Literal

import torch

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modeling.tiny import resolve_model_path
from wuxia_lightning.tokens import FIM_TOKENS

Precision = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "4bit"]


def load_tokenizer(model_name_or_path: str, tokenizer_name_or_path: str | None = None, *,
                   trust_remote_code: bool = False):
    """The tokenizer of the model (or an explicit one), padded on the right for training, with the infill
    (FIM) tokens the cloze layout needs — added as new special tokens when a tokenizer lacks them.

    ``trust_remote_code``: run Python code shipped with the model folder / hub repo (``auto_map``).
    Off unless asked: that code runs with the user's rights the moment the model loads.
    """
    tokenizer = _raw_tokenizer(model_name_or_path, tokenizer_name_or_path, trust_remote_code)
    ensure_infill_tokens(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def ensure_infill_tokens(tokenizer) -> list[int]:
    """Add the FIM tokens a tokenizer lacks (Qwen2.5/Qwen3 have them all); returns the ids added now.

    Always the same tokens in the same order, so every process that loads the tokenizer gets the same ids.
    """
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in FIM_TOKENS if token not in vocabulary]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(token) for token in missing]


def added_infill_token_ids(model_name_or_path: str, tokenizer_name_or_path: str | None = None, *,
                           trust_remote_code: bool = False) -> list[int]:
    """Ids of infill tokens the model's own tokenizer lacks: their embedding rows start untrained, so the
    style adapter must train them (peft ``trainable_token_indices``)."""
    return ensure_infill_tokens(_raw_tokenizer(model_name_or_path, tokenizer_name_or_path, trust_remote_code))


def _raw_tokenizer(model_name_or_path: str, tokenizer_name_or_path: str | None, trust_remote_code: bool = False):
    source = tokenizer_name_or_path or resolve_model_path(model_name_or_path, tokenizer_name_or_path)
    return load_saved_tokenizer(source, trust_remote_code=trust_remote_code)


def load_saved_tokenizer(source: str | os.PathLike, *, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained``, but a local ``tokenizer.json`` is used as saved.

    transformers 5 maps a folder whose config says ``qwen2`` to ``Qwen2Tokenizer``, which rebuilds a
    byte-level BPE pipeline from the vocabulary and ignores the file's own model, pre-tokenizer and
    decoder. A character-level (WordLevel) tokenizer then encodes Chinese text to nothing at all. When
    the rebuilt pipeline differs from the file, the file wins.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # False, not None: with None transformers *asks* on a terminal (and times out into an error elsewhere).
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    saved = Path(source) / "tokenizer.json"
    if not saved.is_file() or not hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer
    on_disk, loaded = json.loads(saved.read_text(encoding="utf-8")), json.loads(tokenizer.backend_tokenizer.to_str())
    if all(on_disk.get(key) == loaded.get(key) for key in ("pre_tokenizer", "decoder")) and \
            on_disk["model"]["type"] == loaded["model"]["type"]:
        return tokenizer
    return PreTrainedTokenizerFast.from_pretrained(str(source), trust_remote_code=trust_remote_code)


def load_base_model(model_name_or_path: str, *, tokenizer_name_or_path: str | None = None,
                    dtype: Precision = "float32", quantization: Quantization = "none",
                    gradient_checkpointing: bool = False, attn_implementation: str | None = None,
                    trust_remote_code: bool = False):
    """A causal LM ready for adapters: frozen, optionally nf4-quantised, checkpointing on request.

    ``trust_remote_code`` (model and tokenizer): run code shipped with the checkpoint; off unless asked.

    4-bit goes through transformers' ``BitsAndBytesConfig`` (Lightning's bnb plugin skips models that
    already hold bnb layers). We deliberately avoid ``prepare_model_for_kbit_training``: it upcasts every
    non-quantised weight to fp32 and can make QLoRA use more memory than bf16 LoRA.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(model_name_or_path, tokenizer_name_or_path)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype if torch_dtype != torch.float32 else torch.float32,
        )
        kwargs["device_map"] = _quantized_device_map()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    vocabulary = len(load_tokenizer(model_name_or_path, tokenizer_name_or_path, trust_remote_code=trust_remote_code))
    if vocabulary > model.get_input_embeddings().num_embeddings:  # infill tokens were added
        model.resize_token_embeddings(vocabulary, pad_to_multiple_of=64)
    model.requires_grad_(False)
    if quantization == "4bit":
        disable_cpu_4bit_repacking(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    model.config.use_cache = False
    return model


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> None:
    """bnb on AVX512-BF16 CPUs repacks 4-bit weights in eval mode and never unpacks them, which breaks
    the next training forward (PITFALLS.md); switching that path off keeps train/eval interleaving safe."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _quantized_device_map() -> dict[str, int | str]:
    """bnb layers must be created on their rank's device (DDP + QLoRA, TRL 921)."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def check_max_length(model_name_or_path: str, max_length: int, tokenizer_name_or_path: str | None = None, *,
                     field: str = "max_length", trust_remote_code: bool = False) -> None:
    """``max_length`` beyond the model's ``max_position_embeddings`` trains on positions the model never
    saw (or crashes mid-run); refuse it up front. A config that cannot be read is left to model loading."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_name_or_path, tokenizer_name_or_path),
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and max_length > context:
        raise UserInputError(f"--data.{field}={max_length} is larger than the context of "
                             f"'{model_name_or_path}' (max_position_embeddings={context})", field=field)
