"""One plain progress line every N steps or M seconds, for runs whose output is a log file, not a terminal.

Lightning's progress bar redraws one line in place: piped into a file or a job log it shows nothing
until the end (or thousands of carriage-return frames). This callback prints ordinary lines instead::

    step 20/400 (epoch 1) | loss 3.142 | 812 tokens/s | elapsed 0:01:05 | ETA 0:20:35
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch

When = Literal["auto", "always", "never"]


class ProgressLines(pl.Callback):
    """Prints step, loss, tokens/s (training time since the previous line) and ETA while fitting, on rank 0.

    Args:
        when: "auto" prints only when stdout is not a terminal (the progress bar covers terminals);
            "always" / "never" force it.
        every_n_steps: a line every this many optimizer steps (0: never by step count).
        every_n_seconds: and a line whenever this many seconds passed since the last one (0: never by time),
            so slow steps (a 7B model) still show signs of life.
        loss_key: the logged metric printed as the loss.
    """

    def __init__(self, when: When = "auto", every_n_steps: int = 10, every_n_seconds: float = 60.0,
                 loss_key: str = "train/loss") -> None:
        super().__init__()
        if when not in ("auto", "always", "never"):
            raise ValueError(f"when must be 'auto', 'always' or 'never', got {when!r}")
        if every_n_steps < 0 or every_n_seconds < 0:
            raise ValueError("every_n_steps and every_n_seconds must be >= 0")
        self.when, self.every_n_steps, self.every_n_seconds = when, every_n_steps, every_n_seconds
        self.loss_key = loss_key
        self.enabled = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enabled = trainer.is_global_zero and (
            self.when == "always" or (self.when == "auto" and not sys.stdout.isatty()))
        now = time.monotonic()
        self._started, self._start_step = now, trainer.global_step  # resumed runs start past 0
        self._last_time, self._last_step, self._tokens, self._paused = now, trainer.global_step, 0, 0.0
        self._epoch = trainer.current_epoch
        self._total = trainer.estimated_stepping_batches  # max_steps / epochs × batches ÷ accumulation

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self.enabled:
            return
        self._tokens += batch_tokens(batch)
        self._epoch = trainer.current_epoch  # at on_train_end Lightning has already counted one more
        step, now = trainer.global_step, time.monotonic()
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        by_steps = self.every_n_steps and step % self.every_n_steps == 0
        by_time = self.every_n_seconds and now - self._last_time >= self.every_n_seconds
        if by_steps or by_time:
            self.print_line(trainer, now, outputs)

    # Validation runs between two training batches: its time is not training throughput.
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            self._paused += time.monotonic() - self._validation_started

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.global_step != self._last_step:  # the last steps since the last line
            self.print_line(trainer, time.monotonic(), None)

    def print_line(self, trainer: pl.Trainer, now: float, outputs: Any) -> None:
        step = trainer.global_step
        total = self._total
        parts = [f"step {step}/{total}" if math.isfinite(total) else f"step {step}",
                 f"(epoch {self._epoch})"]
        loss = metric_value(trainer.callback_metrics.get(self.loss_key))
        if loss is None and isinstance(outputs, Mapping):
            loss = metric_value(outputs.get("loss"))
        if loss is not None:
            parts.append(f"| loss {loss:.4g}")
        seconds = now - self._last_time - self._paused
        if self._tokens and seconds > 0:
            parts.append(f"| {self._tokens / seconds:,.0f} tokens/s")
        parts.append(f"| elapsed {clock(now - self._started)}")
        done = step - self._start_step
        if math.isfinite(total) and done > 0:
            parts.append(f"| ETA {clock((now - self._started) / done * max(total - step, 0))}")
        print(" ".join(parts), flush=True)  # flush: a piped stdout is block-buffered
        self._last_time, self._last_step, self._tokens, self._paused = now, step, 0, 0.0


def batch_tokens(batch: Any) -> int:
    """Tokens fed to the model: the attention mask's sum (stage 2 with replay: its ``chat`` part)."""
    if isinstance(batch, Mapping):
        part = batch.get("chat", batch)
        mask = part.get("attention_mask") if isinstance(part, Mapping) else None
        if isinstance(mask, torch.Tensor):
            return int(mask.sum().item())
    return 0


def metric_value(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) else None


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))
