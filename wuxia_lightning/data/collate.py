"""Stage-neutral collation: pad whatever per-token arrays a sample has, stack whatever scalars it has.

Stage-1 windows carry masking facts (``mode``, ``masked_tokens``, ``shortfall_tokens``), stage-2 chat
examples do not; neither has to pretend to be the other. Every sample of a batch must have the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wuxia_lightning.batch import SEQUENCE_KEYS
from wuxia_lightning.tokens import IGNORE_INDEX

# What a padded position holds, per sequence key: never a real token, never a loss.
_PAD_VALUES = {"labels": IGNORE_INDEX, "loss_weights": 0.0}


def collate_right_padded(samples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Sequences padded on the right to the longest sample, an ``attention_mask`` of the real tokens,
    and every other key stacked into a tensor (one value per sample)."""
    keys = list(samples[0])
    if any(list(sample) != keys for sample in samples):
        raise ValueError(f"samples of one batch have different keys: {sorted({tuple(s) for s in samples})}")
    lengths = [len(sample["input_ids"]) for sample in samples]
    batch = {key: _pad([s[key] for s in samples], max(lengths), _PAD_VALUES.get(key, pad_id))
             for key in keys if key in SEQUENCE_KEYS}
    batch["attention_mask"] = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    for key in keys:
        if key not in SEQUENCE_KEYS:
            batch[key] = torch.tensor([sample[key] for sample in samples])
    return batch


def _pad(rows: Sequence[np.ndarray], length: int, value: float) -> torch.Tensor:
    first = torch.as_tensor(rows[0])
    out = torch.full((len(rows), length), value, dtype=first.dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row)
    return out
