"""Which adapters answer in each column of the chat page, at which scale, and the replies streamed.

One base is loaded with both adapters; a column is a setting of that one model (every adapter off, style
only, style + instruct), never a copy. So only one generation can run at a time: the columns stream **one
after another** (base, then base + style, then stacked), each switching the adapters before it starts and
restoring them once its generation has ended. Interleaving token by token would need one KV cache per
column and an adapter switch per token; one column at a time keeps ``model.generate`` and its stop tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.generation import GenerationSettings, Message, stream_reply
from wuxia_lightning.modeling.adapters import activate
from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE, set_adapter_scales, stop_token_ids


@dataclass(frozen=True)
class Column:
    key: str                   # the name in the saved JSONL and in the page's element ids
    label: str                 # what the page calls it
    adapters: tuple[str, ...]  # the adapters active in this column; () = every adapter off


COLUMNS = (Column("base", "base", ()),
           Column("style", "base + style", (STYLE,)),
           Column("stacked", "stacked (style + instruct)", (STYLE, INSTRUCT)))


@dataclass
class ColumnReply:
    column: str
    text: str
    new_tokens: int
    stopped: bool   # ended on an end-of-turn / eos token, not cut by max_new_tokens
    seconds: float


def require_stacked(manifest: dict, folder: str | Path) -> None:
    """The page compares base, base + style and stacked: it needs both adapters of a stage-2 folder."""
    adapters = manifest.get("adapters")
    if adapters != [STYLE, INSTRUCT]:
        raise UserInputError(f"not a stage-2 (stacked) output folder: its adapters are {adapters}, the chat page "
                             f"needs ['{STYLE}', '{INSTRUCT}'] (train stage 2 on this folder first)",
                             path=str(folder))


def _lora_layers(model: torch.nn.Module) -> list:
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


@contextmanager
def column_adapters(model, adapters: Sequence[str], scales: dict[str, float]) -> Iterator[None]:
    """Only ``adapters`` active (none: the bare base), each LoRA delta × its factor in ``scales``.

    On exit, however the block ends, the active adapters and every layer's ``scaling`` are what they were
    before, and nothing is trainable (peft's ``set_adapter`` marks the adapters it activates trainable).
    No ``torch.no_grad`` here: a page handler may resume this block on another thread, and grad mode is
    per thread; ``generate`` turns gradients off itself.
    """
    active = list(model.base_model.active_adapters)
    saved = [(layer, dict(layer.scaling)) for layer in _lora_layers(model)]
    try:
        set_adapter_scales(model, scales)
        if adapters:
            activate(model, adapters)
            yield
        else:
            with model.disable_adapter():
                yield
    finally:
        activate(model, active)
        model.requires_grad_(False)
        for layer, scaling in saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)


@dataclass
class ChatModel:
    """The loaded stacked model, shared by every column and every browser tab (hence the lock)."""

    model: torch.nn.Module
    tokenizer: object
    folder: Path
    manifest: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stream_column(self, column: Column, messages: Sequence[Message], settings: GenerationSettings,
                      scales: dict[str, float], seed: int) -> Iterator[ColumnReply]:
        """The column's reply so far after each streamed piece; the last one is complete (and stripped)."""
        ids: list[int] = []
        text, start = "", time.perf_counter()
        with column_adapters(self.model, column.adapters, scales):
            torch.manual_seed(seed)  # each column samples from the same seed: a fair, repeatable comparison
            for piece in stream_reply(self.model, self.tokenizer, messages, settings, token_ids=ids):
                text += piece
                yield ColumnReply(column.key, text, len(ids), False, time.perf_counter() - start)
        stopped = bool(ids) and ids[-1] in stop_token_ids(self.tokenizer)
        yield ColumnReply(column.key, text.strip(), len(ids), stopped, time.perf_counter() - start)

    def stream_columns(self, columns: Sequence[Column], messages: Sequence[Message], settings: GenerationSettings,
                       scales: dict[str, float], seed: int) -> Iterator[dict[str, ColumnReply]]:
        """Every column's reply so far (by key), one column after another, holding the model throughout."""
        replies: dict[str, ColumnReply] = {}
        with self.lock:
            for column in columns:
                for reply in self.stream_column(column, messages, settings, scales, seed):
                    replies[column.key] = reply
                    yield dict(replies)


def conversation(system: str | None, prompt: str) -> list[Message]:
    """One turn: each prompt is asked afresh, so the columns' earlier replies never leak into each other."""
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + \
        [{"role": "user", "content": prompt}]
