"""Which samples each training step saw: one JSON line per step, (epoch, index) of every row.

For audits (was a window served twice after a resume?) and for the resume test. Opt in with
``--trainer.callbacks+=wuxia_lightning.sample_log.SampleIdLog --trainer.callbacks.path=FILE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wuxia_lightning.io import strict_json
from wuxia_lightning.nonfinite import SAMPLE_ID_KEYS


def sample_ids(batch: Any) -> dict[str, list[list[int]]]:
    """{section: [[epoch, index], …]} for the batch itself ("") and nested sections (stage 2's chat /
    replay) that carry "epoch" and "index"."""
    if not isinstance(batch, Mapping):
        return {}
    sections = [("", batch)] + [(key, value) for key, value in batch.items() if isinstance(value, Mapping)]
    found = {}
    for name, section in sections:
        if all(key in section for key in SAMPLE_ID_KEYS):
            epochs, indices = (torch.as_tensor(section[key]).flatten().tolist() for key in SAMPLE_ID_KEYS)
            found[name] = [[e, i] for e, i in zip(epochs, indices, strict=True)]
    return found


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
