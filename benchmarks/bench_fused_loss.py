"""Time and peak memory of one forward + backward of CE + β·KL over Qwen's vocabulary, three ways:

  naive         whole B·T×V logits, log_softmax, explicit KL (what a plain training loop does)
  checkpointed  chunked_ce_kl(fused=False): chunk logits recomputed in backward
  fused         chunked_ce_kl (default): chunk logits once, gradients in the same pass

    .venv/bin/python benchmarks/bench_fused_loss.py [--device cpu|cuda] [--tokens 2048] [--repeats 3]

The LM head is frozen (as under LoRA) and only the hidden states require grad. Times are medians over
``--repeats`` runs, interleaved in this one process, so the ratios against naive share machine conditions.
Peak memory: on cuda ``torch.cuda.max_memory_allocated`` above what was allocated before the step; on CPU
the growth of the peak resident set size (VmHWM in /proc/self/status) over one step, measured in a fresh
subprocess per variant because that peak never goes down within a process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import torch
from timing import timed  # benchmarks/timing.py: scripts run with their folder on sys.path

from wuxia_lightning.objectives.losses import chunked_ce_kl

VARIANTS = ("naive", "checkpointed", "fused")
BETAS = (0.1, 0.0)


def make_inputs(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), _dtype(args)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype).requires_grad_(False)
    return {"head": head,
            "policy": torch.randn(args.tokens, args.hidden, device=device, dtype=dtype, requires_grad=True),
            "reference": torch.randn(args.tokens, args.hidden, device=device, dtype=dtype),
            "targets": torch.randint(0, args.vocab, (args.tokens,), device=device),
            "weights": torch.ones(args.tokens, device=device)}


def step(variant: str, beta: float, inputs: dict, chunk_size: int) -> float:
    """One forward + backward; returns the loss so the variants can be checked against each other."""
    inputs["policy"].grad = None
    reference = inputs["reference"] if beta > 0 else None  # β = 0: no reference pass at all
    if variant == "naive":
        loss = _naive_loss(inputs["head"], inputs["policy"], reference, inputs["targets"], beta)
    else:
        sums = chunked_ce_kl(inputs["policy"], inputs["targets"], inputs["weights"], inputs["head"], reference,
                             chunk_size=chunk_size, fused=variant == "fused")
        loss = sums.mean_ce() + beta * sums.mean_kl()
    loss.backward()
    return loss.item()


def _naive_loss(head: torch.nn.Linear, policy: torch.Tensor, reference: torch.Tensor | None,
                targets: torch.Tensor, beta: float) -> torch.Tensor:
    log_p = torch.log_softmax(head(policy).float(), dim=-1)
    loss = torch.nn.functional.nll_loss(log_p, targets)
    if reference is not None:
        with torch.no_grad():
            log_q = torch.log_softmax(head(reference).float(), dim=-1)
        loss = loss + beta * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return loss


def peak_megabytes(variant: str, beta: float, args: argparse.Namespace) -> float:
    if args.device == "cuda":
        inputs = make_inputs(args)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(variant, beta, inputs, args.chunk_size)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    command = [sys.executable, __file__, "--rss-child", variant, str(beta)] + _forwarded(args)
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def rss_child(variant: str, beta: float, args: argparse.Namespace) -> None:
    """Runs in a fresh process: peak resident set (VmHWM) after one step minus the resident set (VmRSS)
    just before it, in MiB. Not ``ru_maxrss``: Linux carries that over from the parent across exec, so a
    child of this (6 GB-peaking) process would report the parent's peak."""
    inputs = make_inputs(args)
    before = _proc_status_kib("VmRSS")
    step(variant, beta, inputs, args.chunk_size)
    print(max(_proc_status_kib("VmHWM") - before, 0) / 1024)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def measure(beta: float, inputs: dict, args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    losses = {variant: step(variant, beta, inputs, args.chunk_size) for variant in VARIANTS}  # warm-up
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):  # interleaved, so slow drifts of the machine hit every variant alike
        for variant in VARIANTS:
            times[variant].append(timed(lambda v=variant: step(v, beta, inputs, args.chunk_size), args.device))
    return {variant: (statistics.median(times[variant]), peak_megabytes(variant, beta, args), losses[variant])
            for variant in VARIANTS}


def main() -> None:
    args = parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], float(args.rss_child[1]), args)
        return
    inputs = make_inputs(args)
    print(f"device {args.device}, dtype {_dtype(args)}, B·T = {args.tokens}, hidden {args.hidden}, "
          f"V = {args.vocab}, chunk {args.chunk_size}, {args.repeats} repeats, torch threads "
          f"{torch.get_num_threads()}; peak memory: "
          + ("cuda max_memory_allocated" if args.device == "cuda" else "VmHWM − VmRSS, fresh process each"))
    print(f"{'variant':13s} {'β':>4s} {'median s':>9s} {'× naive':>8s} {'peak MB':>9s} {'× naive':>8s} {'loss':>10s}")
    for beta in BETAS:
        rows = measure(beta, inputs, args)
        for variant in VARIANTS:
            seconds, megabytes, loss = rows[variant]
            print(f"{variant:13s} {beta:4.1f} {seconds:9.3f} {seconds / rows['naive'][0]:8.2f} "
                  f"{megabytes:9.0f} {megabytes / max(rows['naive'][1], 1e-9):8.2f} {loss:10.6f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tokens", type=int, default=2048, help="B·T loss positions")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="fp32 inputs on cuda too (default there: bf16)")
    parser.add_argument("--rss-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def _forwarded(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
             "--vocab", str(args.vocab), "--chunk-size", str(args.chunk_size)]
    return flags + (["--fp32"] if args.fp32 else [])


def _dtype(args: argparse.Namespace) -> torch.dtype:
    use_bf16 = args.device == "cuda" and not args.fp32 and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if use_bf16 else torch.float32


if __name__ == "__main__":
    main()
