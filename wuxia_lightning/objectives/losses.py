"""Cloze cross-entropy and KL(policy ‖ reference), chunked over loss positions.

The models hand us final hidden states (N×d, small); logits are made one chunk of positions at a time,
so peak loss memory is ~chunk×V instead of several B×T×V tensors (Qwen: V = 151,936, one fp32 logits
tensor at 4×512 tokens is 1.2 GB; at the default 256 positions per chunk a chunk's logits are 156 MB).

Two implementations with the same result: the default fused pass (``fused_loss.py``) computes each chunk's
logits once and its gradients in the same pass; the checkpointed one (``fused=False``, the reference in
tests and the fallback for LM heads that are not a plain ``nn.Linear``) recomputes them in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from wuxia_lightning.objectives.fused_loss import fused_ce_kl
from wuxia_lightning.tokens import IGNORE_INDEX


@dataclass
class TokenLossSums:
    """Weighted sums over loss positions; averages are taken by the caller (per token, across a batch)."""

    ce: torch.Tensor          # Σ w·CE
    kl: torch.Tensor          # Σ w·KL(policy‖ref) (zero when there is no reference)
    weight: torch.Tensor      # Σ w
    nll: torch.Tensor         # Σ CE, unweighted (for perplexity)
    tokens: torch.Tensor      # number of loss positions

    def mean_ce(self) -> torch.Tensor:
        return self.ce / self.weight.clamp_min(1e-12)

    def mean_kl(self) -> torch.Tensor:
        return self.kl / self.weight.clamp_min(1e-12)


def select_loss_positions(hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift for next-token prediction and keep positions whose label is not IGNORE_INDEX.

    Returns (hidden N×d, targets N, weights N, mask B×(T-1)); the mask selects the same positions
    from a reference model's hidden states.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    shifted_weights = weights[:, 1:] if weights is not None else torch.ones_like(targets, dtype=hidden.dtype)
    return hidden[:, :-1][mask], targets[mask], shifted_weights[mask].to(hidden.dtype), mask


def chunked_ce_kl(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  head: Callable[[torch.Tensor], torch.Tensor], ref_hidden: torch.Tensor | None = None,
                  chunk_size: int = 256, compute_dtype: torch.dtype = torch.float32,
                  fused: bool = True, kl_weight: float | None = None) -> TokenLossSums:
    """Sums of CE and KL(P_policy ‖ P_ref) over all N positions, full vocabulary, ``chunk_size`` at a time.

    ``head`` maps hidden states to logits (the LM head); ``ref_hidden`` are the reference model's
    hidden states at the same positions (no gradient), or None to skip the KL term. ``fused`` picks the
    fused pass when ``head`` is a plain ``nn.Linear`` without hooks (anything else is only known through
    its forward, so it takes the checkpointed path). ``kl_weight``: the β of a loss ``mean CE + β·mean KL``
    that the caller will build from these sums, which lets the fused pass merge two gradient matmuls
    (``fused_ce_kl``); None for any other use of the sums.
    """
    rows = trained_token_rows(head) if fused else None
    if rows is not None:  # a tied head with trained new-token rows: the fused pass, k rows overridden
        linear, row_index, row_weight = rows
        ce, kl, nll = fused_ce_kl(hidden, targets, weights, linear.weight, linear.bias, ref_hidden,
                                  chunk_size=chunk_size, compute_dtype=compute_dtype, row_index=row_index,
                                  row_weight=row_weight, kl_weight=kl_weight)
    elif fused and _plain_linear(head):
        ce, kl, nll = fused_ce_kl(hidden, targets, weights, head.weight, head.bias, ref_hidden,
                                  chunk_size=chunk_size, compute_dtype=compute_dtype, kl_weight=kl_weight)
    else:
        ce, kl, nll = _checkpointed_sums(hidden, targets, weights, head, ref_hidden, chunk_size, compute_dtype)
    return TokenLossSums(ce=ce, kl=kl, weight=weights.to(compute_dtype).sum(), nll=nll,
                         tokens=torch.tensor(hidden.shape[0], device=hidden.device))


def _plain_linear(head: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """The fused pass uses ``head.weight``/``head.bias`` directly, which bypasses forward and its hooks:
    only do that when forward is exactly ``nn.Linear``'s (not a subclass, a peft wrapper, or hooked)."""
    hooked = isinstance(head, torch.nn.Module) and bool(head._forward_hooks or head._forward_pre_hooks)
    return type(head) is torch.nn.Linear and not hooked


def trained_token_rows(head) -> tuple[torch.nn.Linear, torch.Tensor | None, torch.Tensor | None] | None:
    """(plain Linear, row ids, row weights) when ``head`` is peft's ``TrainableTokensWrapper`` around a plain
    ``nn.Linear`` — the LM head of a tied-embedding model (Gemma, small Qwens) whose added tokens are trained:
    its forward is that Linear with the active adapters' rows replaced. Row ids/weights are None when no
    adapter with trained rows is active (the reference pass). None for anything else.

    Duck-typed on peft's attribute names so the objectives never import peft."""
    layer = getattr(head, "token_adapter", None)
    base = getattr(layer, "base_layer", None)
    if layer is None or not _plain_linear(base) or getattr(layer, "merged", False):
        return None
    if getattr(layer, "disable_adapters", False):
        return base, None, None
    active = [name for name in layer.active_adapters if name in layer.token_indices]
    if not active:
        return base, None, None
    index = torch.tensor([i for name in active for i in layer.token_indices[name]], device=base.weight.device)
    return base, index, torch.cat([layer.trainable_tokens_delta[name] for name in active])


def _checkpointed_sums(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                       head: Callable[[torch.Tensor], torch.Tensor], ref_hidden: torch.Tensor | None,
                       chunk_size: int, compute_dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ w·CE, Σ w·KL, Σ CE), each chunk's logits recomputed in backward (activation checkpointing)."""
    zero = hidden.new_zeros((), dtype=compute_dtype)
    ce_sum, kl_sum, nll_sum = zero, zero, zero
    for start in range(0, hidden.shape[0], chunk_size):
        end = start + chunk_size
        ref_chunk = ref_hidden[start:end] if ref_hidden is not None else None
        args = (hidden[start:end], targets[start:end], weights[start:end].to(compute_dtype), ref_chunk)
        ce, kl, nll = _chunk_terms(head, compute_dtype, *args) if not torch.is_grad_enabled() else checkpoint(
            _chunk_terms, head, compute_dtype, *args, use_reentrant=False)
        ce_sum, kl_sum, nll_sum = ce_sum + ce, kl_sum + kl, nll_sum + nll
    return ce_sum, kl_sum, nll_sum


def _chunk_terms(head: Callable[[torch.Tensor], torch.Tensor], compute_dtype: torch.dtype,
                 hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 ref_hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Every tensor here is chunk × V; we keep as few of them alive at once as we can.
    log_probs = torch.log_softmax(head(hidden).to(compute_dtype), dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    kl = nll.new_zeros(())
    if ref_hidden is not None:
        with torch.no_grad():  # normalise the reference logits in place: no second V-sized copy
            ref_log_probs = head(ref_hidden).to(compute_dtype)
            ref_log_probs -= torch.logsumexp(ref_log_probs, dim=-1, keepdim=True)
        probs = log_probs.exp()
        # KL(p‖q) = Σ_v p_v log p_v − Σ_v p_v log q_v, as row-wise dot products (no V-sized temporaries).
        per_token_kl = _rowwise_dot(probs, log_probs) - _rowwise_dot(probs, ref_log_probs)
        kl = (weights * per_token_kl).sum()
    return (weights * nll).sum(), kl, nll.sum()


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)
