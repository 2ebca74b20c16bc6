"""Perplexity from summed token NLL, so no B×T×V softmax is ever kept for the metric.

torchmetrics' own ``Perplexity`` takes logits and softmaxes all of them (V ≈ 152k for Qwen: 2.5 GB at
4k tokens); the training step already has per-token NLL from its chunked loss, so we accumulate that.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TokenPerplexity(Metric):
    """``exp(Σ nll / Σ tokens)`` over everything seen, on all ranks; NaN before any token."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # float64: a float32 running sum over millions of tokens loses digits of the mean.
        self.add_state("nll_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("token_count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, token_count: Tensor) -> None:
        """``nll_sum``: summed negative log-likelihood in nats (any shape, summed); ``token_count``: the
        number of tokens it covers (any shape, summed)."""
        self.nll_sum += torch.as_tensor(nll_sum).detach().to(self.nll_sum.device, torch.float64).sum()
        self.token_count += torch.as_tensor(token_count).detach().to(self.nll_sum.device, torch.float64).sum()

    def compute(self) -> Tensor:
        return torch.exp(self.nll_sum / self.token_count)
