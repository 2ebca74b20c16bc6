"""The fused chunked CE + KL against a full-vocabulary float64 computation and the checkpointed path."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wuxia_lightning.objectives.fused_loss import fused_ce_kl
from wuxia_lightning.objectives.losses import chunked_ce_kl, select_loss_positions
from wuxia_lightning.tokens import IGNORE_INDEX

N, D, VOCAB = 37, 16, 301  # 37 rows in chunks of 8: the last chunk has 5


def naive_sums(hidden, targets, weights, head_weight, head_bias=None, ref_hidden=None):
    """(Σ w·CE, Σ w·KL, Σ CE) from whole logits: log_softmax, gather, explicit KL sum. The reference
    distribution is a constant target: no gradient through it, not even to a shared LM head."""
    def logits(h, detach=False):
        weight, bias = (head_weight.detach(), _detach(head_bias)) if detach else (head_weight, head_bias)
        out = h @ weight.T
        return out + bias if bias is not None else out

    log_p = torch.log_softmax(logits(hidden), dim=-1)
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    kl = torch.zeros((), dtype=log_p.dtype)
    if ref_hidden is not None:
        log_q = torch.log_softmax(logits(ref_hidden, detach=True), dim=-1)
        kl = (weights * (log_p.exp() * (log_p - log_q)).sum(-1)).sum()
    return (weights * nll).sum(), kl, nll.sum()


def _detach(tensor):
    return tensor.detach() if tensor is not None else None


def make_inputs(seed=0, bias=False, dtype=torch.float64, unit_weights=False):
    torch.manual_seed(seed)
    head = torch.nn.Linear(D, VOCAB, bias=bias).to(dtype)
    hidden = torch.randn(N, D, dtype=dtype, requires_grad=True)
    ref_hidden = (hidden.detach() + 0.5 * torch.randn(N, D)).to(dtype)  # close to the policy, like a reference
    targets = torch.randint(0, VOCAB, (N,))
    weights = torch.ones(N, dtype=dtype) if unit_weights else torch.rand(N, dtype=dtype) + 0.1
    return head, hidden, ref_hidden, targets, weights


def combined(sums):
    """Distinct coefficients, so a gradient routed to the wrong sum shows."""
    ce, kl, nll = sums
    return 1.0 * ce + 0.3 * kl + 0.2 * nll


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("chunk_size", [1, 8, N, 1000])
@pytest.mark.parametrize("with_ref", [True, False])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("unit_weights", [False, True])
def test_values_and_gradients_equal_full_vocabulary_float64(chunk_size, with_ref, bias, unit_weights):
    head, hidden, ref_hidden, targets, weights = make_inputs(bias=bias, unit_weights=unit_weights)
    ref = ref_hidden if with_ref else None
    weights.requires_grad_(True)
    params = [hidden, weights, head.weight] + ([head.bias] if bias else [])

    fused = fused_ce_kl(hidden, targets, weights, head.weight, head.bias, ref, chunk_size=chunk_size,
                        compute_dtype=torch.float64)
    naive = naive_sums(hidden, targets, weights, head.weight, head.bias, ref)
    for got, expected in zip(fused, naive, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (fused[1] > 0) == with_ref and (with_ref or fused[1].item() == 0.0)
    for got, expected in zip(grads(combined(fused), params), grads(combined(naive), params), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_each_sum_alone_has_its_own_gradient(which):
    """Backward gets a zero grad_output for unused sums: each sum's gradient must stand on its own."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=3)
    params = [hidden, head.weight]
    fused = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8,
                        compute_dtype=torch.float64)
    naive = naive_sums(hidden, targets, weights, head.weight, None, ref_hidden)
    for got, expected in zip(grads(fused[which], params), grads(naive[which], params), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_label_mask_and_loss_weights_through_select_loss_positions():
    """End to end from B×T hidden states: ignored labels contribute nothing, not even gradient."""
    torch.manual_seed(4)
    batch, length = 3, 13
    head = torch.nn.Linear(D, VOCAB, bias=False).double()
    hidden = torch.randn(batch, length, D, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(batch, length, D, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (batch, length))
    labels[torch.rand(batch, length) < 0.4] = IGNORE_INDEX
    loss_weights = torch.rand(batch, length, dtype=torch.float64)

    selected, targets, weights, mask = select_loss_positions(hidden, labels, loss_weights)
    sums = chunked_ce_kl(selected, targets, weights, head, ref_hidden[:, :-1][mask], chunk_size=4,
                         compute_dtype=torch.float64)
    loss = sums.mean_ce() + 0.5 * sums.mean_kl()

    # reference: every position's CE/KL over the whole B×(T-1)×V tensor, masked by ignore_index
    log_p = torch.log_softmax(hidden[:, :-1] @ head.weight.T, -1)
    log_q = torch.log_softmax(ref_hidden[:, :-1] @ head.weight.T, -1)
    ce = torch.nn.functional.cross_entropy(log_p.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                                           reduction="none")
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    keep = (labels[:, 1:] != IGNORE_INDEX).double() * loss_weights[:, 1:]
    expected = ((keep * ce).sum() + 0.5 * (keep * kl).sum()) / keep.sum()

    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    grad, expected_grad = grads(loss, [hidden])[0], grads(expected, [hidden])[0]
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)
    assert grad[:, :-1][~mask].abs().max() == 0 and grad[:, -1].abs().max() == 0


@pytest.mark.parametrize("with_ref", [True, False])
def test_equals_the_checkpointed_path(with_ref):
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=5, bias=True)
    ref = ref_hidden if with_ref else None
    params = [hidden, head.weight, head.bias]
    results = []
    for fused in (True, False):
        sums = chunked_ce_kl(hidden, targets, weights, head, ref, chunk_size=8, compute_dtype=torch.float64,
                             fused=fused)
        values = (sums.ce, sums.kl, sums.nll, sums.weight, sums.tokens)
        results.append(values + grads(combined((sums.ce, sums.kl, sums.nll)), params))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_compute_in_float32(dtype):
    """Values: the fp32 pass over the half-precision numbers matches float64 over the same numbers to fp32
    accuracy (1e-5 relative). Gradients: returned in the input dtype, so rounded to its 8 (bf16) or 11
    (fp16) mantissa bits, i.e. up to ~0.4 % (bf16) relative to the largest entry: 1e-2 of it as tolerance."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=6, dtype=dtype)
    head.weight.requires_grad_(False)
    weights = weights.float()
    fused = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)
    as64 = [t.detach().double() for t in (hidden, head.weight, ref_hidden)]
    as64[0].requires_grad_(True)
    naive = naive_sums(as64[0], targets, weights.double(), as64[1], None, as64[2])

    for got, expected in zip(fused, naive, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    grad, expected_grad = grads(combined(fused), [hidden])[0], grads(combined(naive), [as64[0]])[0]
    assert grad.dtype == dtype
    scale = expected_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-2 * scale, rtol=0)


def test_bf16_is_more_accurate_than_bf16_logits():
    """Why the fused pass upcasts the LM head: the checkpointed path's bf16 logits lose ~2 decimal digits."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=7, dtype=torch.bfloat16)
    weights = weights.float()
    with torch.no_grad():
        as64 = [t.double() for t in (hidden, head.weight, ref_hidden)]
        expected = naive_sums(as64[0], targets, weights.double(), as64[1], None, as64[2])
        errors = []
        for fused in (True, False):
            sums = chunked_ce_kl(hidden, targets, weights, head, ref_hidden, chunk_size=8, fused=fused)
            errors.append(abs(sums.ce.item() - expected[0].item()) + abs(sums.kl.item() - expected[1].item()))
    assert errors[0] < 1e-3 < errors[1]


def test_frozen_head_gets_no_gradient_and_trainable_head_does():
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=8)
    head.weight.requires_grad_(False)
    combined(fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)).backward()
    assert head.weight.grad is None and hidden.grad is not None and hidden.grad.abs().sum() > 0

    head.weight.requires_grad_(True)
    combined(fused_ce_kl(hidden.detach(), targets, weights, head.weight, None, ref_hidden, chunk_size=8)).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_without_gradients_no_graph_and_same_values():
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=9)
    with_grad = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)
    with torch.no_grad():
        without = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)
    assert not any(t.requires_grad for t in without)
    for got, expected in zip(without, with_grad, strict=True):
        assert torch.equal(got, expected.detach())


def test_chunked_ce_kl_takes_the_fused_path_only_for_a_plain_linear():
    head, hidden, _, targets, weights = make_inputs(seed=10)
    assert "Fused" in type(chunked_ce_kl(hidden, targets, weights, head).ce.grad_fn).__name__
    assert "Fused" not in type(chunked_ce_kl(hidden, targets, weights, head, fused=False).ce.grad_fn).__name__
    via_function = chunked_ce_kl(hidden, targets, weights, lambda h: head(h))
    assert "Fused" not in type(via_function.ce.grad_fn).__name__
    head.register_forward_hook(lambda _m, _i, out: None)
    assert "Fused" not in type(chunked_ce_kl(hidden, targets, weights, head).ce.grad_fn).__name__


def test_empty_selection_gives_zero_sums_and_zero_gradient():
    head = torch.nn.Linear(D, VOCAB, bias=False)
    hidden = torch.zeros(0, D, requires_grad=True)
    sums = fused_ce_kl(hidden, torch.zeros(0, dtype=torch.long), torch.zeros(0), head.weight, None,
                       torch.zeros(0, D))
    assert all(s.item() == 0.0 for s in sums)
    assert grads(combined(sums), [hidden])[0].shape == (0, D)


class _OpRecorder(TorchDispatchMode):
    """Records (op, output shape) of every tensor op run while it is active, except views (no memory)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[object, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and not func.is_view:
                self.ops.append((func.overloadpacket, tuple(tensor.shape)))
        return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("with_ref", [True, False])
def test_logits_made_once_per_chunk_and_never_in_backward(fused, with_ref):
    """The point of fusing: each chunk's policy (and reference) logits are computed once, in forward;
    backward makes no V-sized tensor; nothing larger than chunk×V ever exists. The checkpointed path is
    run too, to show the check can fail: it recomputes the logits in backward."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=11)
    head.weight.requires_grad_(False)
    chunk, chunks = 8, -(-N // 8)
    with _OpRecorder() as forward:
        sums = chunked_ce_kl(hidden, targets, weights, head, ref_hidden if with_ref else None,
                             chunk_size=chunk, fused=fused)
    with _OpRecorder() as backward:
        combined((sums.ce, sums.kl, sums.nll)).backward()

    def logits_matmuls(recorder):
        return [shape for op, shape in recorder.ops
                if op in (torch.ops.aten.mm, torch.ops.aten.addmm) and shape[-1] == VOCAB]

    assert max(shape[0] for _, shape in forward.ops + backward.ops if shape[-1:] == (VOCAB,)) <= chunk
    matmuls = logits_matmuls(forward) + logits_matmuls(backward)
    assert len(matmuls) == chunks * (2 if with_ref else 1) or not fused
    vocab_sized_in_backward = [shape for _, shape in backward.ops if VOCAB in shape]
    assert (vocab_sized_in_backward == []) == fused


def test_autocast_does_not_lower_the_precision():
    """Under bf16-mixed training autocast would run the logits matmuls in bf16; the fused pass opts out."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=12, dtype=torch.float32)
    plain = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8)
    for got, expected in zip(autocast, plain, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(grads(combined(autocast), [hidden])[0], grads(combined(plain), [hidden])[0],
                               atol=1e-6, rtol=0)


class _AliveLogits(TorchDispatchMode):
    """Peak number of distinct rows×V tensors alive at once (weak references: the test holds none)."""

    def __init__(self):
        super().__init__()
        self.refs: list[weakref.ref] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 and tensor.shape[1] == VOCAB:
                self.refs.append(weakref.ref(tensor))
        alive = {ref().untyped_storage().data_ptr() for ref in self.refs if ref() is not None}
        self.peak = max(self.peak, len(alive))
        return out


@pytest.mark.parametrize("with_ref", [True, False])
def test_at_most_one_chunk_of_vocabulary_sized_tensors_alive(with_ref):
    """With a reference: log q (becoming log p − log q, then dKL/dz), log p (becoming p, then dCE/dz) and
    logsumexp's temporary; without, the last two. A previous chunk's tensors must be gone by then."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=13)
    head.weight.requires_grad_(False)
    with _AliveLogits() as alive:
        sums = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden if with_ref else None,
                           chunk_size=8)
        combined(sums).backward()
    assert alive.peak == (3 if with_ref else 2)


@pytest.mark.parametrize("chunk_size", [1, 8, 1000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("unit_weights", [False, True])
def test_merged_kl_gradient_equals_the_separate_terms(chunk_size, bias, unit_weights):
    """kl_weight = β: one (dCE/dz + β·dKL/dz)·W piece instead of two, for the loss stage 1 builds
    (mean CE + β·mean KL over Σ w): the same values and gradients as full-vocabulary float64."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=5, bias=bias, unit_weights=unit_weights)
    params = [hidden, head.weight] + ([head.bias] if bias else [])

    def stage1_loss(sums):
        return (sums[0] + 0.3 * sums[1]) / weights.sum()

    fused = fused_ce_kl(hidden, targets, weights, head.weight, head.bias, ref_hidden, chunk_size=chunk_size,
                        compute_dtype=torch.float64, kl_weight=0.3)
    naive = naive_sums(hidden, targets, weights, head.weight, head.bias, ref_hidden)
    for got, expected in zip(fused, naive, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    for got, expected in zip(grads(stage1_loss(fused), params), grads(stage1_loss(naive), params), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("loss", [lambda s: s[0] + 0.5 * s[1], lambda s: s[0] + 0.3 * s[1] + s[2],
                                  lambda s: s[1]])
def test_merged_kl_gradient_refuses_another_loss(loss):
    """The merged piece is right for one loss only: any other combination raises instead of training wrong."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=6)
    sums = fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8,
                       compute_dtype=torch.float64, kl_weight=0.3)
    with pytest.raises(RuntimeError, match="kl_weight=0.3"):
        loss(sums).backward()


def test_merged_kl_gradient_saves_one_head_matmul_per_chunk():
    """The point of kl_weight: per chunk, one chunk×V @ V×d contraction into the hidden states, not two."""
    head, hidden, ref_hidden, targets, weights = make_inputs(seed=12)
    head.weight.requires_grad_(False)
    chunks = -(-N // 8)
    counts = {}
    for kl_weight in (None, 0.3):
        with _OpRecorder() as forward:
            fused_ce_kl(hidden, targets, weights, head.weight, None, ref_hidden, chunk_size=8,
                        compute_dtype=torch.float64, kl_weight=kl_weight)
        counts[kl_weight] = sum(op is torch.ops.aten.mm and shape[-1] == D for op, shape in forward.ops)
    assert counts == {None: 2 * chunks, 0.3: chunks}
