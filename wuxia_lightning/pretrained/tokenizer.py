"""The tokenizer of a base model, ready for both stages: right padding, the infill (FIM) tokens the cloze
layout needs, the ChatML tokens and template stage 2 needs, and the context length a run may use.

Loaded through here by the DataModules (to tokenize) and by the model loaders (to size the embeddings),
so both agree on the vocabulary, including tokens added here.
"""

from __future__ import annotations

import os

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.pretrained.tiny import resolve_model_path
from wuxia_lightning.tokens import CHATML_TEMPLATE, FIM_TOKENS, IM_END, IM_START


class ChatTemplateError(UserInputError):
    """The tokenizer / chat template cannot be used for ChatML training with correct labels."""


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


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer) -> None:
    """Give ``tokenizer`` the ChatML template when it has none (base models); checks the ChatML tokens."""
    chatml_token_ids(tokenizer)
    if not has_chat_template(tokenizer):
        tokenizer.chat_template = CHATML_TEMPLATE


def chatml_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of ``<|im_start|>`` and ``<|im_end|>``; a clear error when the tokenizer lacks them as single
    (special) tokens."""
    ids = []
    for token in (IM_START, IM_END):
        token_id = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if token_id is None or (unk is not None and token_id == unk):
            raise ChatTemplateError(
                f"the tokenizer has no {token} token; ChatML training needs <|im_start|> and <|im_end|> "
                "(add them as special tokens and resize the embeddings, or use a Qwen tokenizer)")
        if tokenizer(token, add_special_tokens=False)["input_ids"] != [token_id]:
            raise ChatTemplateError(f"the tokenizer does not encode {token} as the single token {token_id} "
                                    "(is split_special_tokens set?)")
        ids.append(token_id)
    return ids[0], ids[1]


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
