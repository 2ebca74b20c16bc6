"""The random generators' states travel with the checkpoint, so a resumed run draws the same noise.

Lightning checkpoints hold the weights, optimizer, LR schedule and loop progress, but not the global
RNGs: after a resume, LoRA dropout (torch's global generator) draws different masks than the
uninterrupted run would have, and the weights drift apart. The states are captured when the checkpoint
is written and put back just before the first training batch of the resumed run: between those two
moments the uninterrupted run draws nothing (data order and masking use their own seeded generators),
while the resumed run does (building the model, creating data iterators), so restoring any earlier
would be undone.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python ``random`` states, as tensors and plain
    Python values (a checkpoint loaded with ``weights_only=True`` accepts them)."""
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngStateCheckpoint(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them at the resumed run's first batch.

    Under DDP the file holds rank 0's states and every rank restores them; ``seed_everything`` gives all
    ranks the same states anyway."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
