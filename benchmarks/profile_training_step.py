"""Where one stage-1 training step's time goes: LM head matmuls, softmax sweeps, body, optimizer.

    .venv/bin/python benchmarks/profile_training_step.py [--model gemma3-270m] [--batch 4 --length 128]
        [--beta 0.1] [--steps 2]

The step is ``benchmarks/bench_training_step.py``'s "ours" step (the StyleAlignmentModule as ``wuxia fit``
builds it, its loss, AdamW + schedule) on a fixed random batch, every position a loss position. After one
warm-up step, ``--steps`` steps run under ``torch.profiler``; each operator's *self* time is put in one bucket:

  loss: head matmuls    mm/addmm/bmm inside the fused loss (``record_function("fused_ce_kl")``): logits of the
                        policy (and reference at β > 0) and the gradient contractions with the head
  loss: softmax & rest  every other operator inside the fused loss: log_softmax, exp, gather, scatter, the
                        in-place KL arithmetic, the head's row override
  body forward          operators of the forward pass outside the loss (the reference pass at β > 0 included)
  body backward         autograd's backward (the loss's own backward only scales stored tensors)
  optimizer             AdamW step, schedule, zero_grad
Self times add up to the profiled wall time minus Python overhead outside operators ("other").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_training_step import LORA, _model_folder, _vocab_size, build_ours, make_batch
from torch.profiler import ProfilerActivity, profile, record_function

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}


def profiled_steps(args: argparse.Namespace):
    module, optimizer, scheduler = build_ours(args)
    batch = make_batch(args.batch, args.length, "cpu", vocab=args.vocab)
    module.hparams.kl_beta = args.beta

    def step() -> None:
        with record_function("phase: forward"):
            loss = module.step_losses(batch).loss
        with record_function("phase: backward"):
            loss.backward()
        with record_function("phase: optimizer"):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    return prof, (time.perf_counter() - start) / args.steps


def bucket(event) -> str | None:
    """The bucket of an operator from its enclosing named ranges; None for the ranges themselves."""
    if not event.name.startswith("aten::"):
        return None
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    if "fused_ce_kl" in names:
        return "loss: head matmuls" if event.name in MATMULS else "loss: softmax & rest"
    for phase, label in (("forward", "body forward"), ("backward", "body backward"), ("optimizer", "optimizer")):
        if f"phase: {phase}" in names:
            return label
    # Autograd runs backward operators outside the Python range on some builds: its own events say so.
    return "body backward" if any("Backward" in name or "autograd" in name for name in names) else "other"


def report(prof, seconds_per_step: float, args: argparse.Namespace) -> None:
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        label = bucket(event)
        if label is not None:
            totals[label] += event.self_cpu_time_total / 1e6 / args.steps
    totals["other (Python, outside operators)"] = max(seconds_per_step - sum(totals.values()), 0.0)
    print(f"model {args.model}, B × T = {args.batch} × {args.length}, β = {args.beta:g}, LoRA r={LORA['r']} "
          f"all-linear, {torch.get_num_threads()} threads; profiled {args.steps} steps, "
          f"{seconds_per_step * 1e3:,.0f} ms/step under the profiler\n")
    print("| bucket | ms / step | share |")
    print("|---|---|---|")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {label} | {seconds * 1e3:,.0f} | {seconds / seconds_per_step:.0%} |")
    print("\nlargest operators by self time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    args.device, args.dtype = "cpu", "float32"
    with tempfile.TemporaryDirectory() as scratch:
        args.model_dir = _model_folder(args.model, Path(scratch))
        args.vocab = _vocab_size(args.model_dir)
        prof, seconds = profiled_steps(args)
        report(prof, seconds, args)


if __name__ == "__main__":
    main()
