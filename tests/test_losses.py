"""Chunked CE / KL against a straightforward full-vocabulary computation."""

import pytest
import torch

from wuxia_lightning.objectives.losses import chunked_ce_kl, select_loss_positions
from wuxia_lightning.tokens import IGNORE_INDEX


def naive_sums(hidden, ref_hidden, head_weight, targets, weights):
    """Whole-tensor reference: full logits, softmax, explicit KL sum; float64 throughout."""
    log_p = torch.log_softmax(hidden @ head_weight.T, dim=-1)
    log_q = torch.log_softmax(ref_hidden @ head_weight.T, dim=-1)
    p = log_p.exp()
    nll = -log_p[torch.arange(len(targets)), targets]
    kl = (p * (log_p - log_q)).sum(-1)
    return (weights * nll).sum(), (weights * kl).sum(), nll.sum()


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_equals_full_vocabulary(chunk_size):
    torch.manual_seed(0)
    n, d, vocab = 53, 16, 301
    head = torch.nn.Linear(d, vocab, bias=False).double()
    hidden = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(n, d, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,))
    weights = torch.rand(n, dtype=torch.float64)

    sums = chunked_ce_kl(hidden, targets, weights, head, ref_hidden, chunk_size=chunk_size,
                         compute_dtype=torch.float64)
    ce, kl, nll = naive_sums(hidden, ref_hidden, head.weight, targets, weights)
    assert torch.allclose(sums.ce, ce, atol=1e-6, rtol=0)
    assert torch.allclose(sums.kl, kl, atol=1e-6, rtol=0)
    assert torch.allclose(sums.nll, nll, atol=1e-6, rtol=0)
    assert sums.kl > 0

    grad_chunked = torch.autograd.grad(sums.ce + 0.3 * sums.kl, hidden)[0]
    grad_naive = torch.autograd.grad(ce + 0.3 * kl, hidden)[0]
    assert torch.allclose(grad_chunked, grad_naive, atol=1e-6, rtol=0)


def test_kl_is_zero_against_itself_and_skipped_without_reference():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 50, bias=False).double()
    hidden = torch.randn(10, 8, dtype=torch.float64)
    targets = torch.randint(0, 50, (10,))
    weights = torch.ones(10, dtype=torch.float64)
    same = chunked_ce_kl(hidden, targets, weights, head, hidden.clone(), chunk_size=3, compute_dtype=torch.float64)
    assert abs(same.kl.item()) < 1e-12
    none = chunked_ce_kl(hidden, targets, weights, head, None, chunk_size=3, compute_dtype=torch.float64)
    assert none.kl.item() == 0.0 and torch.allclose(none.ce, same.ce)


def test_select_loss_positions_shifts_and_masks():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    labels = torch.tensor([[IGNORE_INDEX, 7, IGNORE_INDEX, 9, 4], [IGNORE_INDEX] * 4 + [3]])
    selected, targets, weights, mask = select_loss_positions(hidden, labels)
    # position t predicts label t+1: rows 0 positions 0, 2, 3 and row 1 position 3
    assert targets.tolist() == [7, 9, 4, 3]
    assert selected.squeeze(-1).tolist() == [0.0, 2.0, 3.0, 8.0]
    assert weights.tolist() == [1.0] * 4 and mask.sum() == 4


def test_perplexity_on_qwen_vocabulary_never_materialises_full_logits():
    """By construction: the LM head only ever sees `chunk_size` positions, never all B×T at once."""
    from wuxia_lightning.metrics import TokenPerplexity

    torch.manual_seed(0)
    batch, length, vocab, chunk = 4, 512, 151_936, 256
    head = torch.nn.Linear(32, vocab, bias=False)
    rows_seen: list[int] = []
    head.register_forward_hook(lambda _m, _i, out: rows_seen.append(out.shape[0]))
    hidden = torch.randn(batch, length, 32)
    labels = torch.randint(0, vocab, (batch, length))
    selected, targets, weights, _ = select_loss_positions(hidden, labels)
    metric = TokenPerplexity()
    with torch.no_grad():
        sums = chunked_ce_kl(selected, targets, weights, head, None, chunk_size=chunk)
    metric.update(sums.nll, sums.tokens)
    assert max(rows_seen) <= chunk and sum(rows_seen) == batch * (length - 1)
    # reference: the same NLL from a plain cross-entropy over the whole batch
    expected = torch.nn.functional.cross_entropy(head(selected), targets, reduction="mean").exp()
    torch.testing.assert_close(metric.compute().float(), expected, rtol=1e-4, atol=0)
