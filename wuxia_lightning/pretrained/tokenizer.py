"""The tokenizer of a base model, ready for both stages: right padding, the infill (FIM) tokens the cloze
layout needs, the chat format stage 2 needs (the model's own template; Gemma's or ChatML for bases without
one), and the context length a run may use.

Loaded through here by the DataModules (to tokenize) and by the model loaders (to size the embeddings),
so both agree on the vocabulary, including tokens added here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.pretrained.tiny import resolve_model_path
from wuxia_lightning.tokens import (
    CHATML_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    FIM_TOKENS,
    GEMMA_TEMPLATE,
    IM_END,
    IM_START,
    START_OF_TURN,
)


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


@dataclass(frozen=True)
class ChatFormat:
    """How a model marks chat turns: the token that opens one, the token that closes one (labelled in stage 2
    and stopping generation) and the template used when the tokenizer has none."""

    name: str
    turn_start: str
    turn_end: str
    template: str


CHATML = ChatFormat("chatml", IM_START, IM_END, CHATML_TEMPLATE)
GEMMA = ChatFormat("gemma", START_OF_TURN, END_OF_TURN, GEMMA_TEMPLATE)


def chat_format(tokenizer) -> ChatFormat:
    """The model's own turn format: the one its chat template closes turns with; without a template, Gemma's
    when the vocabulary has Gemma's turn tokens (a Gemma base), else ChatML."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return GEMMA if END_OF_TURN in template and IM_END not in template else CHATML
    return GEMMA if is_single_token(tokenizer, START_OF_TURN) and is_single_token(tokenizer, END_OF_TURN) \
        else CHATML


def ensure_chat_template(tokenizer) -> ChatFormat:
    """Give ``tokenizer`` its family's template when it has none (base models); checks the turn tokens."""
    format_ = chat_format(tokenizer)
    turn_token_ids(tokenizer, format_)
    if not has_chat_template(tokenizer):
        tokenizer.chat_template = format_.template
    return format_


def turn_token_ids(tokenizer, format_: ChatFormat | None = None) -> tuple[int, int]:
    """Ids of the tokens that open and close a turn (``<|im_start|>``/``<|im_end|>`` in ChatML); a clear
    error when the tokenizer lacks them as single (special) tokens."""
    format_ = format_ or chat_format(tokenizer)
    ids = []
    for token in (format_.turn_start, format_.turn_end):
        token_id = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if token_id is None or (unk is not None and token_id == unk):
            raise ChatTemplateError(
                f"the tokenizer has no {token} token; {format_.name} chat training needs {format_.turn_start} "
                f"and {format_.turn_end} (add them as special tokens and resize the embeddings, or give the "
                "tokenizer a chat template)")
        if tokenizer(token, add_special_tokens=False)["input_ids"] != [token_id]:
            raise ChatTemplateError(f"the tokenizer does not encode {token} as the single token {token_id} "
                                    "(is split_special_tokens set?)")
        ids.append(token_id)
    return ids[0], ids[1]


def is_single_token(tokenizer, token: str) -> bool:
    """``token`` is in the vocabulary as itself: it round-trips through its id. (Comparing with the unk id is
    not enough: some tokenizers name <|endoftext|> as their unk token.)"""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and tokenizer.convert_ids_to_tokens(token_id) == token


def document_end_id(tokenizer) -> int:
    """The token that ends a document in stage-1 packing: Qwen's ``<|endoftext|>`` where the vocabulary has
    it (a Qwen base's eos), else the tokenizer's eos (Gemma's ``<eos>``)."""
    if is_single_token(tokenizer, END_OF_TEXT):
        return tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if tokenizer.eos_token_id is None:
        raise UserInputError("the tokenizer has neither <|endoftext|> nor an eos token to end documents with",
                             field="model.tokenizer_name_or_path")
    return tokenizer.eos_token_id


def leading_special_ids(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text (Gemma's ``<bos>``; nothing for Qwen). Gemma degrades
    badly on sequences without it, so stage-1 windows and raw continuations start with them too."""
    special = set(tokenizer.all_special_ids)
    return [i for i in tokenizer("", add_special_tokens=True)["input_ids"] if i in special]


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
