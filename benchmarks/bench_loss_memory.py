"""Peak memory of CE + KL over Qwen's vocabulary: naive full logits vs our chunked loss.

    .venv/bin/python benchmarks/bench_loss_memory.py [--tokens 2048] [--vocab 151936]

Each variant runs in a fresh process (forward + backward) and reports its peak RSS, so the numbers are
comparable within one run of this script.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch

from wuxia_lightning.objectives.losses import chunked_ce_kl


def run_variant(variant: str, tokens: int, vocab: int, hidden: int = 64) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    policy = torch.randn(tokens, hidden, requires_grad=True)
    reference = torch.randn(tokens, hidden)
    targets = torch.randint(0, vocab, (tokens,))
    weights = torch.ones(tokens)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "naive":
        log_p = torch.log_softmax(head(policy), -1)
        with torch.no_grad():
            log_q = torch.log_softmax(head(reference), -1)
        ce = torch.nn.functional.nll_loss(log_p, targets)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        loss = ce + 0.1 * kl
    else:
        sums = chunked_ce_kl(policy, targets, weights, head, reference, chunk_size=256)
        loss = sums.mean_ce() + 0.1 * sums.mean_kl()
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{variant},{(peak - baseline) / 1024:.0f},{elapsed:.2f},{loss.item():.6f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, args.tokens, args.vocab)
        return
    results = {}
    for variant in ("naive", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
                              "--vocab", str(args.vocab)], capture_output=True, text=True, check=True)
        name, megabytes, seconds, loss = out.stdout.strip().splitlines()[-1].split(",")
        results[name] = (float(megabytes), float(seconds), float(loss))
        print(f"{name:8s} peak +{megabytes} MB  {seconds} s  loss {loss}")
    naive, chunked = results["naive"], results["chunked"]
    print(f"B*T={args.tokens}, V={args.vocab}: chunked uses {naive[0] / max(chunked[0], 1):.1f}x less peak memory, "
          f"{chunked[1] / naive[1]:.2f}x the time; |loss difference| = {abs(naive[2] - chunked[2]):.2e}")


if __name__ == "__main__":
    main()
