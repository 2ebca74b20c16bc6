"""Author-LM cross-entropy: does the trained style adapter find the replies more its own than the base does?

Each reply is scored as raw text (no chat template: the style adapter was trained on raw novels),
after one start token (the tokenizer's BOS, else its EOS, the document separator of causal LM training),
so every token of the reply is predicted. Losses are summed over tokens and divided by the reply's
characters, so models with different tokenizers compare. The style model is the folder's ``style``
adapter alone; the base is the same network with every adapter off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def cross_entropy_vs_base(folder: str | Path, replies: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """variant → {"ce_style", "ce_base", "ce_vs_base"} in nats per character (negative: style model prefers)."""
    from wuxia_lightning.modeling.adapters import frozen_reference
    from wuxia_lightning.modeling.stacking import STYLE, load_stacked

    model, tokenizer = load_stacked(folder)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = {}
    for variant, texts in replies.items():
        texts = [t for t in texts if t.strip()]
        ids = [[start, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
        characters = sum(len(t) for t in texts)
        with frozen_reference(model, [STYLE]):
            style = sum(sequence_nll(model, s) for s in ids)
        with frozen_reference(model):
            base = sum(sequence_nll(model, s) for s in ids)
        out[variant] = {"ce_style": style / max(1, characters), "ce_base": base / max(1, characters),
                        "ce_vs_base": (style - base) / max(1, characters)}
    return out


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, ids: Sequence[int]) -> float:
    """Summed negative log-likelihood (nats) of ``ids[1:]`` given the tokens before each."""
    tokens = torch.tensor([list(ids)], device=next(model.parameters()).device)
    logits = model(input_ids=tokens).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="sum"))
