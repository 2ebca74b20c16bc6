"""Embedding rows a base never trained, which a reply must still be able to end on.

Why: a base (not instruct) checkpoint may carry its chat tokens without ever having trained them. Gemma 3
270M's ``<end_of_turn>`` row points the same way as thousands of ``<unusedN>`` rows and junk tokens
(cosine 0.995 to its nearest; a trained token's nearest is far lower). With a tied head its logit cannot
rise above those twins', so a fine-tuned model "ends the turn" by emitting one of them (``stepToken``,
cosine 0.91) and writes on: stage 2's replies never stopped (replication, 40 and 100 steps). LoRA on the
linear layers cannot separate rows that the head itself does not separate; training the row does (peft
``trainable_token_indices`` on the instruct adapter, ``InstructModule.train_turn_end_row``): 0.00 → 0.81
stop rate at the same 40 steps.
"""

from __future__ import annotations

import torch

TWIN_COSINE = 0.99  # rows this aligned are one direction to the head
_CHUNK_ROWS = 16_384  # bounded working memory on 150k–260k-row vocabularies


@torch.no_grad()
def twin_rows(weight: torch.Tensor, token_id: int, cosine: float = TWIN_COSINE) -> int:
    """How many *other* rows of ``weight`` have cosine ≥ ``cosine`` with row ``token_id`` (0: it stands apart)."""
    row = weight[token_id].float()
    row = row / row.norm().clamp_min(1e-12)
    count = 0
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        block = weight[start:start + _CHUNK_ROWS].float()
        similarity = (block @ row) / block.norm(dim=1).clamp_min(1e-12)
        count += int((similarity >= cosine).sum())
    return count - 1  # the row itself
