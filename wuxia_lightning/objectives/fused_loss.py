"""Fused chunked CE + KL(policy ‖ reference): each chunk's logits are made once, gradients in the same pass.

Why: the checkpointed loss (``chunked_ce_kl(..., fused=False)``) holds one chunk of logits at a time by
recomputing every chunk in backward, so the LM head matmuls (policy, and for β > 0 the reference too) run
twice. The gradients of the loss sums w.r.t. a chunk's logits have closed forms, so forward can compute
them while the chunk's logits are alive and contract them with the LM head at once into gradients w.r.t.
the hidden states (N×d, small). Backward then only scales what forward stored.

Per row, with z the policy logits, p = softmax(z), q = the reference softmax and y the target:
    CE = logsumexp(z) − z_y             dCE/dz = p − onehot(y)
    KL = Σ_v p (log p − log q)          dKL/dz = p ⊙ (log p − log q − KL)

Forward returns three sums, Σ w·CE, Σ w·KL and Σ CE (the ``TokenLossSums`` fields the caller combines, e.g.
ce_mean + β·kl_mean), and any mix of them may receive a gradient. So instead of one combined gradient we
keep per-sum pieces, held from forward to backward:
  * hidden states: two N×d tensors in the compute dtype, (p − onehot)·W and dKL/dz·W, *without* the row
    weights, which backward applies; Σ w·CE and Σ CE share the first. (N = 2048, d = 896: 7 MB each.)
  * LM head weight, only when it requires grad (full fine-tuning, e.g. the pre-training module; under LoRA
    it is frozen): V×d accumulators for Σ w·CE, for Σ CE (the same tensor when every weight is 1) and for
    Σ w·KL (only with a reference), so one to three V×d tensors. Bias the same, as V-vectors.
  * loss weights, only if they require grad: the per-row CE and KL (N-vectors).
Only one chunk's V-sized tensors are alive at a time: three chunk×V buffers with a reference (log q, and
the policy logits while log_softmax writes log p; the gradients reuse log q and log p in place), two
without.

Logits are computed in ``compute_dtype`` (fp32 by default) even for bf16/fp16 inputs, and with autocast
switched off: bf16 logits of magnitude ~20 are only good to ~0.06, which softmax turns into ~6 %
probability errors. The LM head is upcast once per call, a V×d copy alive during forward only (none when
it is already fp32). Gradients are returned in the inputs' dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (Σ w·CE, Σ w·KL, Σ CE)


def fused_ce_kl(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, head_weight: torch.Tensor,
                head_bias: torch.Tensor | None = None, ref_hidden: torch.Tensor | None = None,
                chunk_size: int = 256, compute_dtype: torch.dtype = torch.float32,
                row_index: torch.Tensor | None = None, row_weight: torch.Tensor | None = None,
                kl_weight: float | None = None) -> Sums:
    """(Σ w·CE, Σ w·KL(P_policy ‖ P_ref), Σ CE) over the N rows of ``hidden`` (N×d), ``chunk_size`` at a time.

    ``targets`` (N) are already-selected labels (no IGNORE_INDEX: see ``select_loss_positions``); the LM
    head is ``hidden @ head_weight.T + head_bias``. ``ref_hidden`` (N×d) gets no gradient; None skips the
    reference pass and returns a zero KL. Gradients flow to hidden, head_weight/bias and weights when they
    require grad.

    ``row_index`` (k) / ``row_weight`` (k×d): the head's rows ``row_index`` are ``row_weight`` instead (new
    tokens trained on a tied, frozen head: peft ``trainable_token_indices``); their gradient is k×d, built
    from the k logit columns, so training a few rows never costs a V×d gradient, nor a V×d copy of the head.

    ``kl_weight`` = β: the caller promises that the loss is ``Σ w·CE / s + β · Σ w·KL / s`` (s any scale) and
    nothing else differentiates Σ CE. Then one N×d piece (dCE/dz + β·dKL/dz)·W replaces the two, and one
    chunk×V×d matmul per chunk is saved at β > 0; backward checks the promise and raises if it is broken.
    """
    args = (hidden, targets, weights, head_weight, head_bias, ref_hidden, chunk_size, compute_dtype, row_index,
            row_weight, kl_weight)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (hidden, weights, head_weight, head_bias, row_weight)):
        return _FusedCEKL.apply(*args)
    # Nothing to differentiate (evaluation): the same pass without the gradient matmuls.
    sums, _ = _run(*args, wanted=_Wanted(hidden=False, head=False, bias=False, weights=False, rows=False))
    return sums


@dataclass(frozen=True)
class _Wanted:
    """Which inputs get a gradient; the pieces for the others are never computed."""

    hidden: bool
    head: bool
    bias: bool
    weights: bool
    rows: bool = False

    def any_logit_grads(self) -> bool:
        return self.hidden or self.head or self.bias or self.rows


@dataclass
class _Stored:
    """Everything backward needs; see the module docstring for sizes. None = not wanted."""

    hidden_ce: torch.Tensor | None = None     # N×d: Σ_v (p − onehot)·W, per row, unweighted
    hidden_kl: torch.Tensor | None = None     # N×d: Σ_v dKL/dz·W, per row, unweighted
    kl_weight: float | None = None            # set: hidden_ce holds (dCE/dz + β·dKL/dz)·W, hidden_kl is None
    head_wce: torch.Tensor | None = None      # V×d: d(Σ w·CE)/dW
    head_nll: torch.Tensor | None = None      # V×d: d(Σ CE)/dW (aliases head_wce when all weights are 1)
    head_wkl: torch.Tensor | None = None      # V×d: d(Σ w·KL)/dW
    bias_wce: torch.Tensor | None = None      # V, likewise for the bias
    bias_nll: torch.Tensor | None = None
    bias_wkl: torch.Tensor | None = None
    row_nll: torch.Tensor | None = None       # N: CE per row = d(Σ w·CE)/dw
    row_kl: torch.Tensor | None = None        # N: KL per row = d(Σ w·KL)/dw
    rows_wce: torch.Tensor | None = None      # k×d: d(Σ w·CE)/d row_weight, likewise for Σ CE and Σ w·KL
    rows_nll: torch.Tensor | None = None
    rows_wkl: torch.Tensor | None = None
    row_index: torch.Tensor | None = None     # k: which logit columns feed the row gradients


class _FusedCEKL(torch.autograd.Function):
    """Forward does all the work (see ``_run``); backward scales the stored pieces by grad_output."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                head_weight: torch.Tensor, head_bias: torch.Tensor | None, ref_hidden: torch.Tensor | None,
                chunk_size: int, compute_dtype: torch.dtype, row_index: torch.Tensor | None,
                row_weight: torch.Tensor | None, kl_weight: float | None) -> Sums:
        needs = ctx.needs_input_grad
        wanted = _Wanted(hidden=needs[0], weights=needs[2], head=needs[3], bias=head_bias is not None and needs[4],
                         rows=row_weight is not None and needs[9])
        sums, ctx.stored = _run(hidden, targets, weights, head_weight, head_bias, ref_hidden, chunk_size,
                                compute_dtype, row_index, row_weight, kl_weight, wanted)
        ctx.save_for_backward(weights)
        ctx.dtypes = (hidden.dtype, weights.dtype, head_weight.dtype,
                      head_bias.dtype if head_bias is not None else None,
                      row_weight.dtype if row_weight is not None else None)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ce: torch.Tensor, grad_kl: torch.Tensor, grad_nll: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        (weights,) = ctx.saved_tensors
        stored: _Stored = ctx.stored
        hidden_dtype, weights_dtype, head_dtype, bias_dtype, rows_dtype = ctx.dtypes
        w = weights.to(grad_ce.dtype)
        if stored.kl_weight is not None:
            _check_mixed_gradient(stored.kl_weight, grad_ce, grad_kl, grad_nll)
        grad_hidden = _scale_rows(stored.hidden_ce, grad_ce * w + grad_nll, stored.hidden_kl, grad_kl * w)
        grad_head = _combine(stored.head_wce, grad_ce, stored.head_nll, grad_nll, stored.head_wkl, grad_kl)
        grad_bias = _combine(stored.bias_wce, grad_ce, stored.bias_nll, grad_nll, stored.bias_wkl, grad_kl)
        grad_weights = _combine(stored.row_nll, grad_ce, None, grad_nll, stored.row_kl, grad_kl)
        grad_rows = _combine(stored.rows_wce, grad_ce, stored.rows_nll, grad_nll, stored.rows_wkl, grad_kl)
        return (_cast(grad_hidden, hidden_dtype), None, _cast(grad_weights, weights_dtype),
                _cast(grad_head, head_dtype), _cast(grad_bias, bias_dtype), None, None, None, None,
                _cast(grad_rows, rows_dtype), None)


def _check_mixed_gradient(kl_weight: float, grad_ce: torch.Tensor, grad_kl: torch.Tensor,
                          grad_nll: torch.Tensor) -> None:
    """The merged hidden piece is only right for the loss it was built for (see ``kl_weight``)."""
    if bool(grad_nll != 0) or not torch.allclose(grad_kl, kl_weight * grad_ce, rtol=1e-5, atol=0.0):
        raise RuntimeError(f"fused_ce_kl(kl_weight={kl_weight}) was differentiated through another loss "
                           f"(d/dΣCE {float(grad_ce):.3g}, d/dΣKL {float(grad_kl):.3g}, d/dΣnll {float(grad_nll):.3g});"
                           " pass kl_weight=None for that")


def _run(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, head_weight: torch.Tensor,
         head_bias: torch.Tensor | None, ref_hidden: torch.Tensor | None, chunk_size: int,
         compute_dtype: torch.dtype, row_index: torch.Tensor | None, row_weight: torch.Tensor | None,
         kl_weight: float | None, wanted: _Wanted) -> tuple[Sums, _Stored]:
    """The chunk loop: sums, plus the gradient pieces ``wanted`` asks for."""
    head = head_weight.to(compute_dtype)  # one upcast per call, not per chunk (no copy if already fp32)
    bias = head_bias.to(compute_dtype) if head_bias is not None else None
    rows = _overridden_rows(head, bias, row_index, row_weight, compute_dtype)
    w = weights.to(compute_dtype)
    stored = _allocate(hidden, head, bias, w, ref_hidden is not None, wanted,
                       kl_weight if ref_hidden is not None else None)
    full_head = _Head(head, bias, rows)
    if wanted.rows:
        stored.row_index = row_index
        stored.rows_wce, stored.rows_nll, stored.rows_wkl = _head_accumulators(rows.weight, w,
                                                                               ref_hidden is not None)
    totals = [hidden.new_zeros((), dtype=compute_dtype) for _ in range(3)]  # Σ w·CE, Σ w·KL, Σ CE
    # Autocast (bf16-mixed training) would turn the matmuls below back into half precision: opt out.
    # The named range lets a profile tell the LM head's time from the body's (free when not profiling).
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False), \
            torch.profiler.record_function("fused_ce_kl"):
        for start in range(0, hidden.shape[0], chunk_size):
            span = slice(start, start + chunk_size)
            ref_chunk = ref_hidden[span].to(compute_dtype) if ref_hidden is not None else None
            nll, kl = _chunk_and_store(stored, span, hidden[span].to(compute_dtype), targets[span], ref_chunk,
                                       w[span], full_head, wanted.any_logit_grads())
            totals[0] += w[span] @ nll
            totals[2] += nll.sum()
            if kl is not None:
                totals[1] += w[span] @ kl
    return (totals[0], totals[1], totals[2]), stored


@dataclass(frozen=True)
class _Rows:
    """Head rows that a trained adapter overrides (k of V), kept apart so the V×d head is never copied."""

    index: torch.Tensor   # k
    weight: torch.Tensor  # k×d: the rows in use
    delta: torch.Tensor   # k×d: weight − the head's own rows (for the gradient contraction)
    bias: torch.Tensor | None  # k: the head's bias at those rows


@dataclass(frozen=True)
class _Head:
    weight: torch.Tensor          # V×d, in the compute dtype
    bias: torch.Tensor | None
    rows: _Rows | None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = torch.addmm(self.bias, h, self.weight.T) if self.bias is not None else h @ self.weight.T
        if self.rows is not None:  # k columns recomputed with the trained rows: k×d work, not a V×d copy
            columns = h @ self.rows.weight.T
            if self.rows.bias is not None:
                columns += self.rows.bias
            logits.index_copy_(1, self.rows.index, columns)
        return logits

    def contract(self, grad_logits: torch.Tensor, out: torch.Tensor) -> None:
        """out = grad_logits @ (the head with its rows overridden), without building that head."""
        torch.mm(grad_logits, self.weight, out=out)
        if self.rows is not None:
            out.addmm_(grad_logits[:, self.rows.index], self.rows.delta)


def _overridden_rows(head: torch.Tensor, bias: torch.Tensor | None, row_index: torch.Tensor | None,
                     row_weight: torch.Tensor | None, compute_dtype: torch.dtype) -> _Rows | None:
    if row_index is None:
        return None
    weight = row_weight.detach().to(compute_dtype)
    return _Rows(row_index, weight, weight - head[row_index], bias[row_index] if bias is not None else None)


def _chunk_and_store(stored: _Stored, span: slice, h: torch.Tensor, targets: torch.Tensor,
                     ref_h: torch.Tensor | None, w: torch.Tensor, head: _Head,
                     logit_grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk, start to finish. Its own function so the chunk×V tensors die on return: held in the
    loop's variables they would stay alive while the next chunk allocates its own (2 more chunk×V)."""
    nll, kl, d_ce, d_kl = _chunk(h, targets, ref_h, head, logit_grads)
    _store_chunk(stored, span, h, w, head, nll, kl, d_ce, d_kl)
    return nll, kl


def _chunk(h: torch.Tensor, targets: torch.Tensor, ref_h: torch.Tensor | None, head: _Head, logit_grads: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-row CE and KL of one chunk, and dCE/dz, dKL/dz if asked. After log_softmax everything works in
    place on log q and log p, so at most three chunk×V tensors are ever alive."""
    log_ratio = _log_softmax(head.logits(ref_h)) if ref_h is not None else None  # log q, for now
    log_p = _log_softmax(head.logits(h))
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    if log_ratio is not None:
        log_ratio.neg_().add_(log_p)  # log p − log q
    p = log_p.exp_()  # log p is not needed any more: reuse its memory
    kl = _rowwise_dot(p, log_ratio) if log_ratio is not None else None
    if not logit_grads:
        return nll, kl, None, None
    d_kl = log_ratio.sub_(kl.unsqueeze(1)).mul_(p) if log_ratio is not None else None
    d_ce = p.scatter_add_(1, targets.unsqueeze(1), p.new_full((len(targets), 1), -1.0))  # p − onehot(y)
    return nll, kl, d_ce, d_kl


def _allocate(hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None, w: torch.Tensor,
              has_ref: bool, wanted: _Wanted, kl_weight: float | None) -> _Stored:
    n, dtype = hidden.shape[0], head.dtype
    stored = _Stored(kl_weight=kl_weight)
    if wanted.hidden:
        stored.hidden_ce = hidden.new_zeros(n, head.shape[1], dtype=dtype)
        separate_kl = has_ref and kl_weight is None
        stored.hidden_kl = hidden.new_zeros(n, head.shape[1], dtype=dtype) if separate_kl else None
    if wanted.head:
        stored.head_wce, stored.head_nll, stored.head_wkl = _head_accumulators(head, w, has_ref)
    if wanted.bias:
        stored.bias_wce, stored.bias_nll, stored.bias_wkl = _head_accumulators(bias, w, has_ref)
    if wanted.weights:
        stored.row_nll = hidden.new_zeros(n, dtype=dtype)
        stored.row_kl = hidden.new_zeros(n, dtype=dtype) if has_ref else None
    return stored


def _head_accumulators(param: torch.Tensor, w: torch.Tensor, has_ref: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Σ w·CE and Σ CE have the same gradient when every weight is 1 (the common case): one V×d tensor."""
    weighted = torch.zeros_like(param)
    unweighted = weighted if bool((w == 1).all()) else torch.zeros_like(param)
    return weighted, unweighted, torch.zeros_like(param) if has_ref else None


def _store_chunk(stored: _Stored, rows: slice, h: torch.Tensor, w: torch.Tensor, head: _Head,
                 nll: torch.Tensor, kl: torch.Tensor | None, d_ce: torch.Tensor | None,
                 d_kl: torch.Tensor | None) -> None:
    """Contract this chunk's logit gradients into the stored pieces while they are still alive."""
    if stored.row_nll is not None:
        stored.row_nll[rows] = nll
        if kl is not None:
            stored.row_kl[rows] = kl
    if stored.head_wce is not None:
        weighted_h = h * w.unsqueeze(1)  # weighting the chunk's d columns is cheaper than its V columns
        stored.head_wce.addmm_(d_ce.T, weighted_h)
        if stored.head_nll is not stored.head_wce:
            stored.head_nll.addmm_(d_ce.T, h)
        if d_kl is not None:
            stored.head_wkl.addmm_(d_kl.T, weighted_h)
    if stored.rows_wce is not None:
        _store_rows(stored, h, w, d_ce, d_kl)
    if stored.bias_wce is not None:
        stored.bias_wce.addmv_(d_ce.T, w)
        if stored.bias_nll is not stored.bias_wce:
            stored.bias_nll += d_ce.sum(0)
        if d_kl is not None:
            stored.bias_wkl.addmv_(d_kl.T, w)
    if stored.hidden_ce is not None:  # last: the merged piece overwrites d_ce, which the pieces above read
        _store_hidden(stored, rows, head, d_ce, d_kl)


def _store_hidden(stored: _Stored, rows: slice, head: _Head, d_ce: torch.Tensor, d_kl: torch.Tensor | None
                  ) -> None:
    if d_kl is not None and stored.kl_weight is not None:  # one matmul for both terms
        head.contract(d_ce.add_(d_kl, alpha=stored.kl_weight), stored.hidden_ce[rows])
        return
    head.contract(d_ce, stored.hidden_ce[rows])
    if d_kl is not None:
        head.contract(d_kl, stored.hidden_kl[rows])


def _store_rows(stored: _Stored, h: torch.Tensor, w: torch.Tensor, d_ce: torch.Tensor,
                d_kl: torch.Tensor | None) -> None:
    """The k overridden rows' gradients from their k logit columns only."""
    weighted_h = h * w.unsqueeze(1)
    d_ce_rows = d_ce[:, stored.row_index]
    stored.rows_wce.addmm_(d_ce_rows.T, weighted_h)
    if stored.rows_nll is not stored.rows_wce:
        stored.rows_nll.addmm_(d_ce_rows.T, h)
    if d_kl is not None:
        stored.rows_wkl.addmm_(d_kl[:, stored.row_index].T, weighted_h)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """One fused kernel (max, sum of exp and the write in a single sweep per row). It allocates the output,
    but logsumexp-then-subtract-in-place allocated as large a temporary and made four sweeps over the
    chunk: 2–3× slower on CPU (benchmarks/bench_training_step.py), and more kernel launches on a GPU."""
    return torch.log_softmax(logits, dim=1)


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


def _scale_rows(ce_part: torch.Tensor | None, ce_scale: torch.Tensor, kl_part: torch.Tensor | None,
                kl_scale: torch.Tensor) -> torch.Tensor | None:
    if ce_part is None:
        return None
    grad = ce_part * ce_scale.unsqueeze(1)
    return grad.addcmul_(kl_part, kl_scale.unsqueeze(1)) if kl_part is not None else grad


def _combine(wce: torch.Tensor | None, grad_ce: torch.Tensor, nll: torch.Tensor | None, grad_nll: torch.Tensor,
             wkl: torch.Tensor | None, grad_kl: torch.Tensor) -> torch.Tensor | None:
    """grad_ce·wce + grad_nll·nll + grad_kl·wkl over the pieces that exist."""
    if wce is None:
        return None
    total = wce * grad_ce
    if nll is not None:
        total += nll * grad_nll
    if wkl is not None:
        total += wkl * grad_kl
    return total


def _cast(grad: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return grad.to(dtype) if grad is not None else None
