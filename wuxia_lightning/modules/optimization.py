"""The optimizer every stage uses: AdamW, linear warm-up, cosine decay, stepped per optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw_with_cosine_schedule(params: Iterable[torch.nn.Parameter], learning_rate: float, weight_decay: float,
                               warmup_steps: int, total_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` answer. Warm-up is capped at half the run, so a short run
    (the quickstart, a smoke test) still reaches its peak learning rate and decays from it."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(list(params), lr=learning_rate, weight_decay=weight_decay)
    total = max(1, total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, total // 2), total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
