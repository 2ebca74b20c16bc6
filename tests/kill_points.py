"""A test-only callback for the resume test (imported by the ``wuxia fit`` subprocess via PYTHONPATH).

It holds the run still at a known point, so the test's SIGKILL lands there and not at a random moment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

HANG_LIMIT_S = 900  # an orphaned run (its test died) gives up on its own


class HangAfterCheckpoint(L.Callback):
    """At the start of the batch after global step ``step`` (whose checkpoint has just been written, as
    checkpoint callbacks run last in ``on_train_batch_end``), write ``marker`` and wait to be killed."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline:
            time.sleep(0.2)
        os._exit(3)
