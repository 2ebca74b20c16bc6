"""Non-finite guard: an optimizer step whose loss or gradients hold NaN/Inf is skipped, not applied.

One bad batch (an fp16/bf16 overflow, a corrupt sample) should cost one step, not the run: once a NaN
reaches the weights every later step and every later save is poisoned. Several bad steps in a row mean
the run itself has diverged, so after ``max_bad_steps`` of them training stops with a clear error; the
checkpoints and the adapter folder then still hold the last good weights (the skipped steps never
touched them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import lightning as L
import torch

from wuxia_lightning.batch import SAMPLE_ID_KEYS

log = logging.getLogger(__name__)



class NonFiniteTrainingError(RuntimeError):
    """Training produced NaN/Inf too often to continue (or a save would have written NaN/Inf weights)."""


class NonFiniteGuard(L.Callback):
    """Skips optimizer steps with a non-finite loss or gradient; raises after ``max_bad_steps`` in a row.

    The loss is checked before each backward (every micro-batch under gradient accumulation), the
    gradients just before the optimizer step. A bad step is skipped by dropping every gradient
    (``grad = None``): torch optimizers leave such parameters and their state untouched, so the weights
    stay bit-identical. The step still counts for ``global_step`` and the LR schedule, as with
    ``GradScaler`` skips.

    Args:
        max_bad_steps: consecutive skipped optimizer steps after which training stops with
            :class:`NonFiniteTrainingError`. A good step resets the count.
    """

    def __init__(self, max_bad_steps: int = 10) -> None:
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be at least 1, got {max_bad_steps}")
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.skipped_total = 0
        self._loss_bad = False
        self._batches: list[str] = []  # micro-batches feeding the coming optimizer step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._batches.append(describe_batch(batch, batch_idx))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # A NaN loss nearly always yields NaN gradients, but not when the bad term has no grad path;
        # remembering it here makes the loss alone enough to skip the step.
        if not bool(torch.isfinite(loss.detach()).all()):
            self._loss_bad = True

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        loss_bad, grads_bad = self._loss_bad, not gradients_finite(params)
        batches, self._batches, self._loss_bad = self._batches, [], False
        # Under DDP/FSDP each rank sees its own loss (and, with FSDP, its own gradient shard): skip on
        # every rank if any rank saw a problem, or the replicas would drift apart.
        bad = trainer.strategy.reduce_boolean_decision(loss_bad or grads_bad, all=False)
        if not bad:
            self.consecutive = 0
            return
        for param in params:
            param.grad = None
        self.consecutive += 1
        self.skipped_total += 1
        what = " and ".join(name for name, flag in (("loss", loss_bad), ("gradient", grads_bad)) if flag)
        where = f"global step {trainer.global_step}"
        if trainer.world_size > 1:
            where += f" (rank {trainer.global_rank})"
        source = "; ".join(batches) or "unknown batch"
        if self.consecutive >= self.max_bad_steps:
            raise NonFiniteTrainingError(
                f"{self.consecutive} optimizer steps in a row had a non-finite {what or 'value (another rank)'}"
                f" (last: {where}, {source}); stopping. Checkpoints and the output folder hold the last good"
                f" weights. Lower the learning rate, prefer bf16 over fp16, or inspect the named batches"
                f" (max_bad_steps={self.max_bad_steps}).")
        log.warning("non-finite %s at %s, %s: optimizer step skipped (%d/%d bad steps in a row)",
                    what or "value on another rank", where, source, self.consecutive, self.max_bad_steps)

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.consecutive = state_dict.get("consecutive", 0)
        self.skipped_total = state_dict.get("skipped_total", 0)


def gradients_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every existing gradient is finite (one device sync for all of them)."""
    checks = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


def assert_finite_parameters(module: torch.nn.Module, what: str = "adapter") -> None:
    """Refuse to save weights holding NaN/Inf: better no new output than a silently broken one."""
    bad = [name for name, p in module.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteTrainingError(f"not saving the {what}: non-finite values in {', '.join(bad[:3])}"
                                     + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))


def sample_ids(batch) -> dict[str, list[list[int]]]:
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


def describe_batch(batch, batch_idx: int) -> str:
    """``batch_idx N`` plus the samples' (epoch, index) pairs where the batch carries them (also inside
    nested sections such as stage 2's ``chat`` / ``replay``)."""
    parts = [f"batch_idx {batch_idx}"]
    for name, pairs in sample_ids(batch).items():
        prefix = f"{name} " if name else ""
        parts.append(f"{prefix}samples (epoch, index) " + ", ".join(f"({e}, {i})" for e, i in pairs))
    return " ".join(parts)
