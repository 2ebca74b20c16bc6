"""Which samples each training step saw: one JSON line per step, (epoch, index) of every row.

For audits (was a window served twice after a resume?) and for the resume test. Opt in with
``--trainer.callbacks+=wuxia_lightning.callbacks.sample_log.SampleIdLog --trainer.callbacks.path=FILE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from wuxia_lightning.callbacks.nonfinite import sample_ids
from wuxia_lightning.io import strict_json


class SampleIdLog(L.Callback):
    """Appends ``{"step": global step after the batch, "samples": sample_ids(batch)}`` to ``path``
    (``path.rankN`` on ranks other than 0); each line is flushed, so a killed run's file is readable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        path = Path(self.path if trainer.global_rank == 0 else f"{self.path}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(strict_json({"step": trainer.global_step, "samples": sample_ids(batch)}) + "\n")
