"""Chat template and loss labels for stage 2.

Labels are -100 everywhere except the assistant replies **and their closing turn token** (``<|im_end|>``
in ChatML, ``<end_of_turn>`` for Gemma; every assistant turn). The spans come from the tokenizer's own chat
template (its family's — Gemma's or ChatML — when it has none):

1. render the whole dialogue once (``full``);
2. for each assistant turn ``i`` render ``messages[:i]`` with the generation prompt (``prefix``) and
   ``messages[:i+1]`` (``upto``); both must be prefixes of ``full`` -- a template that rewrites earlier
   turns (e.g. Qwen3 thinking templates) is refused rather than mislabelled;
3. the reply span is ``full[len(prefix) : end of the last <|im_end|> inside upto]``;
4. ``full`` is tokenized once with offsets; a token is labelled when its characters lie inside a span.

Over-long dialogues keep whole turns from the start and are cut right after the last assistant reply
(``<|im_end|>`` included) that fits; when even the first reply does not fit, the dialogue is dropped.
A reply is never kept partially cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from wuxia_lightning.data.chat_formats import Message
from wuxia_lightning.pretrained.tokenizer import (
    ChatTemplateError,
    chat_format,
    has_chat_template,
    turn_token_ids,
)
from wuxia_lightning.tokens import IGNORE_INDEX


@dataclass
class EncodedDialogue:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class EncodingStats:
    """``examples``: dialogues kept (encoded); ``truncated``: kept but cut after an earlier reply;
    ``dropped``: not kept because the first assistant reply does not fit; ``label_tokens``: labelled
    tokens over the kept examples."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    label_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _render(tokenizer, messages: Sequence[Message], generation_prompt: bool) -> str:
    kwargs = {} if has_chat_template(tokenizer) else {"chat_template": chat_format(tokenizer).template}
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                        add_generation_prompt=generation_prompt, **kwargs)
    if not isinstance(text, str):
        raise ChatTemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, "
                                "expected a string")
    return text


def reply_spans(tokenizer, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans ``[start, end)`` of every assistant reply including its
    closing turn token (``<|im_end|>``, Gemma's ``<end_of_turn>``; not the newline after it)."""
    turn_end = chat_format(tokenizer).turn_end
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise ValueError("dialogue has no assistant turn")
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if all(role == "system" for role in roles[:i]):
            raise ValueError("an assistant turn must follow a user turn (the dialogue starts with a reply)")
        prefix = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(prefix) and full.startswith(upto) and len(prefix) <= len(upto)):
            raise ChatTemplateError(
                f"the chat template renders turn {i} differently once later turns follow (it rewrites the "
                "history, e.g. a Qwen3 thinking template); labels would be wrong. Use a template that "
                "renders each turn independently (e.g. the ChatML fallback: set tokenizer.chat_template).")
        segment = upto[len(prefix):]
        end = segment.rfind(turn_end)
        if end < 0:
            raise ChatTemplateError(f"the chat template does not close assistant turns with {turn_end}")
        if message["content"].strip() not in segment[:end]:
            raise ChatTemplateError(f"the chat template does not render assistant turn {i} verbatim "
                                    "after the generation prompt")
        spans.append((len(prefix), len(prefix) + end + len(turn_end)))
    return full, spans


def encode_dialogue(tokenizer, messages: list[Message], max_length: int) -> EncodedDialogue | None:
    """Token ids and labels of one dialogue; ``None`` when its first assistant reply does not fit."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    turn_end = chat_format(tokenizer).turn_end
    _, turn_end_id = turn_token_ids(tokenizer)
    full, spans = reply_spans(tokenizer, messages)
    if not getattr(tokenizer, "is_fast", True):
        raise ChatTemplateError("a fast tokenizer is needed (offset mappings)")
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]

    labels = [IGNORE_INDEX] * len(input_ids)
    reply_ends: list[int] = []  # token index just after each reply's <|im_end|>
    span_index = 0
    for t, (start, end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if end > start and start >= span_start and end <= span_end:
            labels[t] = input_ids[t]
            if end == span_end:
                if input_ids[t] != turn_end_id:
                    raise ChatTemplateError(f"assistant reply does not end with the {turn_end} token")
                reply_ends.append(t + 1)
    if len(reply_ends) != len(spans):
        raise ChatTemplateError(f"could not find the closing {turn_end} token of every assistant reply")

    if len(input_ids) <= max_length:
        return EncodedDialogue(input_ids, labels, truncated=False)
    fitting = [end for end in reply_ends if end <= max_length]
    if not fitting:
        return None
    cut = fitting[-1]
    return EncodedDialogue(input_ids[:cut], labels[:cut], truncated=True)


def encode_dialogues(tokenizer, dialogues: Iterable[list[Message]], max_length: int
                     ) -> tuple[list[EncodedDialogue], EncodingStats]:
    """Encode many dialogues; dropped ones are left out and counted in the stats."""
    stats = EncodingStats()
    encoded: list[EncodedDialogue] = []
    for messages in dialogues:
        item = encode_dialogue(tokenizer, messages, max_length)
        if item is None:
            stats.dropped += 1
            continue
        encoded.append(item)
        stats.examples += 1
        stats.truncated += int(item.truncated)
        stats.label_tokens += sum(label != IGNORE_INDEX for label in item.labels)
    return encoded, stats
