"""The training objectives as plain functions of (causal LM, batch, reference hidden states).

No Trainer, no LightningModule: both stages, stage-1 evaluation, the pre-training of the tiny base and
every benchmark compute their losses here, and tests call these directly. The reference's hidden states
come from the caller (``modeling.adapters.frozen_reference`` runs the same network with adapters off or
with only the style adapter on), so this module never needs to know about adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wuxia_lightning.objectives.losses import TokenLossSums, chunked_ce_kl, select_loss_positions

DEFAULT_CHUNK_SIZE = 256


def final_hidden_states(causal_lm: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states (B×T×d). The LM head is applied later, chunk by chunk, so the
    B×T×V logits of a forward through the whole causal LM never exist."""
    decoder = causal_lm.get_decoder()
    return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def token_loss_sums(causal_lm: torch.nn.Module, batch: dict[str, torch.Tensor],
                    ref_hidden: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    hidden: torch.Tensor | None = None, kl_weight: float | None = None) -> TokenLossSums:
    """Σ CE over the labelled positions of ``batch`` (weighted by ``loss_weights`` when it has them) and,
    given the reference's hidden states at the same positions, Σ KL(policy ‖ reference).
    ``hidden``: the policy's hidden states when the caller already has them; ``kl_weight``: see
    ``chunked_ce_kl`` (only for a caller whose loss is exactly mean CE + kl_weight·mean KL)."""
    hidden = final_hidden_states(causal_lm, batch) if hidden is None else hidden
    selected, targets, weights, mask = select_loss_positions(hidden, batch["labels"], batch.get("loss_weights"))
    ref_selected = ref_hidden[:, :-1][mask] if ref_hidden is not None else None
    return chunked_ce_kl(selected, targets, weights, causal_lm.get_output_embeddings(), ref_selected,
                         chunk_size=chunk_size, kl_weight=kl_weight)


@dataclass
class StyleAlignmentLoss:
    """Stage 1: ``loss = cloze CE + β·KL(policy ‖ reference)``, per-token means, plus what perplexity needs."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    nll_sum: torch.Tensor   # Σ CE, unweighted
    tokens: torch.Tensor    # loss positions

    def perplexity(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens.clamp_min(1))


def style_alignment_loss(causal_lm: torch.nn.Module, batch: dict[str, torch.Tensor], kl_beta: float,
                         ref_hidden: torch.Tensor | None = None,
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> StyleAlignmentLoss:
    """The stage-1 objective. ``ref_hidden`` is required when ``kl_beta`` > 0 (β = 0 needs no reference
    pass at all, which is why the caller makes it)."""
    if kl_beta > 0 and ref_hidden is None:
        raise ValueError("kl_beta > 0 needs the reference's hidden states")
    # The loss below is exactly mean CE + β·mean KL (both over Σ w), so the fused pass may merge the two
    # gradient matmuls of the LM head.
    sums = token_loss_sums(causal_lm, batch, ref_hidden if kl_beta > 0 else None, chunk_size,
                           kl_weight=kl_beta if kl_beta > 0 else None)
    ce, kl = sums.mean_ce(), sums.mean_kl()
    return StyleAlignmentLoss(loss=ce + kl_beta * kl, ce=ce, kl=kl, nll_sum=sums.nll, tokens=sums.tokens)
