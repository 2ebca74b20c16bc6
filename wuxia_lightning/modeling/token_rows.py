"""Trained token rows (peft ``trainable_token_indices``) without a copy of the whole matrix per forward.

Why: peft's ``TrainableTokensLayer`` builds ``W.index_copy(0, rows, deltas)`` — a full V×d copy — on every
forward, and for the embedding ``F.embedding`` on that copy then gives a dense V×d gradient in backward
(zero-filled, scattered into, then k rows read out). On Gemma 3 (V = 262,144, d = 640) that is three
671 MB tensors per step for the embedding alone, and the tied LM head copies it again in every
generated token. The same result needs only the k trained rows: look the rows up in the frozen matrix,
then put the k trained rows in (embedding) or recompute the k logit columns (tied head).

``copy_free_token_rows(model)`` swaps that forward in on each such layer instance; whatever it does not
cover (adapters off, merged, several overlapping adapters' checks aside, quantized or unknown base
layers, extra arguments) goes to peft's own forward unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def copy_free_token_rows(model: torch.nn.Module) -> int:
    """Give every peft trainable-tokens layer of ``model`` the copy-free forward; returns how many."""
    patched = 0
    for module in model.modules():
        if _is_token_layer(module) and not getattr(module, "_wuxia_copy_free", False):
            module.forward = types.MethodType(_forward, module)
            module._wuxia_copy_free = True
            patched += 1
    return patched


def _is_token_layer(module: torch.nn.Module) -> bool:
    """Duck-typed on peft's attribute names (``TrainableTokensLayer``), as objectives/losses.py does."""
    return all(hasattr(module, name) for name in ("token_indices", "trainable_tokens_delta", "base_layer",
                                                  "forward_adapters"))


def _forward(layer: torch.nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    base = layer.base_layer
    active = [name for name in layer.active_adapters if name in layer.token_indices]
    plain_base = isinstance(base, torch.nn.Embedding) or type(base) is torch.nn.Linear
    if args or kwargs or layer.disable_adapters or layer.merged or not active or not plain_base:
        return layer.forward_adapters(x, layer.active_adapters, *args, **kwargs)
    layer._check_overlapping_tokens(active)
    index = torch.tensor([i for name in active for i in layer.token_indices[name]], device=base.weight.device)
    delta = torch.cat([layer.trainable_tokens_delta[name] for name in active]).to(base.weight.dtype)
    if isinstance(base, torch.nn.Embedding):
        return _embedding(layer, base, x, index, delta)
    return _tied_head(base, x, index, delta)


def _embedding(layer: torch.nn.Module, base: torch.nn.Embedding, ids: torch.Tensor, index: torch.Tensor,
               delta: torch.Tensor) -> torch.Tensor:
    """peft's result (F.embedding on the overridden matrix, then the base's embed_scale) from the frozen
    matrix plus a k-row lookup: the gradient reaches ``delta`` through those rows only."""
    result = F.embedding(ids, base.weight, padding_idx=base.padding_idx, max_norm=base.max_norm,
                         norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)
    slot = torch.full((base.weight.shape[0],), -1, dtype=torch.long, device=ids.device)
    slot[index] = torch.arange(len(index), device=ids.device)
    which = slot[ids]
    result = torch.where((which >= 0).unsqueeze(-1), delta[which.clamp_min(0)], result)
    embed_scale = layer._get_embed_scale()
    return result * embed_scale.to(result.dtype) if embed_scale is not None else result


def _tied_head(base: torch.nn.Linear, x: torch.Tensor, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """peft's result (F.linear on the overridden matrix, no bias, as peft does) with the k trained logit
    columns recomputed in place of the frozen ones."""
    logits = F.linear(x, base.weight)
    return logits.index_copy_(logits.dim() - 1, index, F.linear(x, delta))
