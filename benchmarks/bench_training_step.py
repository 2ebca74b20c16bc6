"""Our stage-1 training step against plain training loops: time per step, tokens/s and peak memory.

    .venv/bin/python benchmarks/bench_training_step.py [--model tiny|qwen2.5-0.5b-shaped] [--device cpu|cuda]
        [--dtype auto|float32|bfloat16] [--batch 8 --length 256] [--tp-batch 4 --tp-length 256]
        [--warmup 1 --repeats 3 --tp-repeats 5] [--sections beta tokens]

What is timed, every step = forward + backward + AdamW step + zero_grad, on one fixed batch of random
token ids (labels = inputs, every position a loss position, ``loss_weights`` 1, ``attention_mask`` 1):

  ours β=0.1 / β=0   the StyleAlignmentModule as ``wuxia fit`` builds it (configure_model from a saved model
                     folder), its ``step_losses(batch).loss``, and the optimizer its ``configure_optimizers``
                     uses (AdamW + cosine schedule, both stepped). One module; ``hparams.kl_beta`` is set
                     per step, which is all ``--model.kl_beta`` changes.
  naive β=0.1 / β=0  the same peft model and batch as a plain loop writes it: ``model(input_ids).logits``
                     (B×T×V), ``F.cross_entropy``, and for β > 0 KL(policy‖reference) from full-vocabulary
                     log_softmax of both, the reference under ``model.disable_adapter()`` + ``no_grad``.
  Trainer + peft     ``transformers.Trainer`` on a fresh ``get_peft_model`` of the same weights with the same
                     LoRA (r, α, dropout, all-linear), β = 0 causal LM (the model's own full-logits loss),
                     same batch size, length and dtype; no clipping, no eval, no saving, no logging. Time per
                     step = median interval between ``on_step_end`` callbacks after warm-up (data loading
                     included, as in a real run).
  SFTTrainer         TRL's, when TRL is installed (a row saying so otherwise), same model, LoRA, data and
                     batch. Its default loss is chunked (TRL ≥ 1.14 patches a fused LM head: log-probs in
                     tiles of 4,096 tokens × 32,768 vocabulary columns, recomputed in backward; Triton kernels
                     on GPU, the same tiles in torch on CPU). SFTConfig's own defaults are overridden to match
                     the others: no gradient checkpointing, no bf16 autocast.

The model: a Qwen2 of tiny dimensions (hidden 64, 2 layers) with Qwen's real vocabulary (151,936 rows, tied
embeddings), or ``--model qwen2.5-0.5b-shaped`` (Qwen2.5-0.5B's shapes, random weights). LoRA r = 16, α = 32
on every linear layer of the blocks. Section ``beta``: ours vs naive at B·T = 2,048; section ``tokens``: our
β = 0 vs Trainer (+ SFTTrainer) at B = 4 × T = 256. A smaller B·T (the 0.5B-shaped model on CPU) is marked
"reduced" in the output.

Times are medians of ``--repeats`` steps after ``--warmup`` steps, interleaved in this one process (ours and
naive alternate; ours is timed both before and after the Trainer run), so ratios share machine conditions.
Peak memory is measured separately, one fresh subprocess per configuration (this script re-invoked with
``--only``), over its first two steps: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated
before the first step; on CPU the peak resident set (VmHWM, reset through /proc/self/clear_refs just before
the first step, so loading the model does not count) minus the resident set (VmRSS) at that moment, with
every weight read once before it (from_pretrained memory-maps the file; unread weights are not resident).
Within one process the CPU peak never goes down and freed memory stays cached, hence a process per
configuration. "step MB" is that growth: activations, logits, gradients and optimizer state; "total MB"
adds what was resident before (weights, and on CPU the Python/torch libraries). Ratios use step MB.

On CPU, read the times with the allocator in mind: glibc serves every tensor above 32 MB with a fresh mmap,
so each B×T×V (or chunk×V) tensor is page-faulted and zeroed by the kernel on first touch. The full-logits
paths allocate several GB per step and pay most for that; a GPU's caching allocator reuses its blocks and
does not. ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment makes glibc reuse
freed memory too, for a CPU run closer to what a GPU sees. Times only, and mind the RAM: freed memory then
stays with the process, and a run of both sections on the tiny model grew past 14 GB (``--sections
tokens`` alone stays near 3 GB).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timing import sync, timed  # benchmarks/timing.py: scripts run with their folder on sys.path

from wuxia_lightning.tokens import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
QWEN_TOKENIZER = REPO.parent / "shared" / "fixtures" / "qwen2.5-tokenizer"
QWEN_VOCAB = 151_936
SHAPES = {  # Qwen2Config fields; both tie the LM head to the embeddings, as Qwen2.5-0.5B does
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=192),
    "qwen2.5-0.5b-shaped": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                num_key_value_heads=2, intermediate_size=4864),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
LEARNING_RATE = 2e-4
ISSUE_BETA_TOKENS, ISSUE_TP_SHAPE = 2048, (4, 256)
TARGETS = {"time": 0.6, "memory": 0.25, "tokens_per_s": 1.2}
KL_BETA = 0.1
SFT = "TRL SFTTrainer + peft β=0"


# ---- the model on disk ---------------------------------------------------------------------------
def save_model_folder(model: str, folder: Path) -> None:
    """A random Qwen2 of the chosen shape with Qwen's vocabulary, plus a tokenizer (the real Qwen2.5 files
    when present; the sample-text character tokenizer otherwise: ids are random, only the FIM tokens
    matter), saved the way ``--model.model_name_or_path`` expects a folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from wuxia_lightning.pretrained.tiny import sample_texts, train_char_tokenizer

    if QWEN_TOKENIZER.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    else:
        tokenizer = train_char_tokenizer(sample_texts(), min_count=1)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=QWEN_VOCAB, tie_word_embeddings=True, max_position_embeddings=32_768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, use_cache=False, **SHAPES[model])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_batch(batch: int, length: int, device: str, seed: int = 0, vocab: int = QWEN_VOCAB
               ) -> dict[str, torch.Tensor]:
    """What the stage-1 collator hands the module (objectives/causal_lm.py): plain causal-LM windows."""
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device), "labels": ids.clone().to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "loss_weights": torch.ones(batch, length).to(device)}


# ---- ours: the LightningModule's step -------------------------------------------------------------
def build_ours(args: argparse.Namespace):
    from wuxia_lightning.modules.optimization import adamw_with_cosine_schedule
    from wuxia_lightning.modules.style import StyleAlignmentModule

    module = StyleAlignmentModule(model_name_or_path=str(args.model_dir), kl_beta=KL_BETA, dtype=args.dtype,
                                  lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                                  lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"],
                                  learning_rate=LEARNING_RATE, warmup_steps=10)
    module.configure_model()
    module.to(args.device).train()
    trainable = [p for p in module.peft_model.parameters() if p.requires_grad]
    optimization = adamw_with_cosine_schedule(trainable, LEARNING_RATE, 0.0, 10, 1000)
    return module, optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]


def ours_step(module, optimizer, scheduler, batch: dict[str, torch.Tensor], beta: float) -> float:
    module.hparams.kl_beta = beta
    loss = module.step_losses(batch).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


# ---- naive: full logits on the same peft model ----------------------------------------------------
def naive_loss(peft_model, batch: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """Written as a plain loop would, but without gratuitous copies: the labels are shifted (as transformers'
    own loss does), not the logits, so no B×T×V slice is copied in forward or zero-filled in backward."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = peft_model(**inputs).logits.float()                      # B×T×V (no copy when already fp32)
    vocab = logits.shape[-1]
    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), targets, ignore_index=IGNORE_INDEX)
    if beta > 0:
        with peft_model.disable_adapter(), torch.no_grad():
            log_q = torch.log_softmax(peft_model(**inputs).logits.float().view(-1, vocab), dim=-1)
        log_p = torch.log_softmax(logits.view(-1, vocab), dim=-1)
        per_token = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # KL(p‖q)
        positions = targets != IGNORE_INDEX
        loss = loss + beta * per_token[positions].mean()
    return loss


def naive_step(peft_model, optimizer, batch: dict[str, torch.Tensor], beta: float) -> float:
    loss = naive_loss(peft_model, batch, beta)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def build_naive_optimizer(module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.peft_model.parameters() if p.requires_grad], lr=LEARNING_RATE)


# ---- Hugging Face Trainer (and TRL's SFTTrainer) --------------------------------------------------
class Windows(torch.utils.data.Dataset):
    """Random token windows as a plain torch Dataset (no ``datasets``): what Trainer's default collator stacks."""

    def __init__(self, count: int, length: int, vocab: int = QWEN_VOCAB) -> None:
        self.ids = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def hf_peft_model(args: argparse.Namespace):
    """The same weights and LoRA as ours, built the way a plain peft user builds it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=getattr(torch, args.dtype))
    return get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))


def step_end_times(device: str):
    from transformers import TrainerCallback

    class StepEndTimes(TrainerCallback):
        """perf_counter at the end of every optimizer step; ``on_first_step(model)`` lets the memory child
        take its baseline just before the first step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.on_first_step: Callable[[torch.nn.Module], None] | None = None

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0 and self.on_first_step is not None:
                self.on_first_step(model)

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter())

    return StepEndTimes()


def hf_training_args(args: argparse.Namespace, output_dir: str, steps: int, config_class=None, **extra):
    from transformers import TrainingArguments

    config_class = config_class or TrainingArguments
    return config_class(
        output_dir=output_dir, per_device_train_batch_size=args.tp_batch, max_steps=steps,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=0.0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, remove_unused_columns=False,
        label_names=["labels"], use_cpu=args.device == "cpu", bf16=getattr(args, "hf_bf16", False), fp16=False,
        gradient_checkpointing=False,
        seed=0, **extra)


def run_trainer(args: argparse.Namespace, steps: int,
                on_first_step: Callable[[torch.nn.Module], None] | None = None
                ) -> list[float]:
    """``transformers.Trainer`` for ``steps`` steps; returns the on_step_end times."""
    from transformers import PrinterCallback, Trainer, default_data_collator

    callback = step_end_times(args.device)
    callback.on_first_step = on_first_step
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(model=hf_peft_model(args), args=hf_training_args(args, output_dir, steps),
                          train_dataset=Windows(steps * args.tp_batch, args.tp_length, args.vocab),
                          data_collator=default_data_collator, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict, printed to stdout
        trainer.train()
    return callback.times


def sft_skip_reason() -> str | None:
    """Why TRL's SFTTrainer cannot run here, or None if it can."""
    try:
        import trl  # noqa: F401
    except ImportError:
        return "TRL is not installed"
    return None


def run_sft_trainer(args: argparse.Namespace, steps: int,
                    on_first_step: Callable[[torch.nn.Module], None] | None = None
                    ) -> list[float]:
    """TRL's SFTTrainer with its default (chunked) loss, same model/LoRA/data/batch; on_step_end times."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    callback = step_end_times(args.device)
    callback.on_first_step = on_first_step
    windows = Windows(steps * args.tp_batch, args.tp_length, args.vocab).ids.tolist()
    with tempfile.TemporaryDirectory() as output_dir:
        config = hf_training_args(args, output_dir, steps, SFTConfig, max_length=args.tp_length, packing=False)
        trainer = SFTTrainer(model=hf_peft_model(args), args=config,
                             train_dataset=Dataset.from_dict({"input_ids": windows}), callbacks=[callback])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return callback.times


# ---- timing --------------------------------------------------------------------------------------
def time_beta_section(args: argparse.Namespace, module, ours_opt, ours_sched, naive_opt) -> dict[str, float]:
    batch = make_batch(args.batch, args.length, args.device, vocab=args.vocab)
    steps = {f"ours β={beta:g}": (lambda b=beta: ours_step(module, ours_opt, ours_sched, batch, b))
             for beta in (KL_BETA, 0.0)}
    steps |= {f"naive β={beta:g}": (lambda b=beta: naive_step(module.peft_model, naive_opt, batch, b))
              for beta in (KL_BETA, 0.0)}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved: slow drifts of the machine hit every configuration alike
        for name, step in steps.items():
            times[name].append(timed(step, args.device))
    return {name: statistics.median(values) for name, values in times.items()}


def check_losses_agree(args: argparse.Namespace, module) -> tuple[float, float]:
    """Ours and naive compute the same objective: β = 0.1 loss at the same weights, dropout off."""
    batch = make_batch(args.batch, args.length, args.device, vocab=args.vocab)
    module.eval()
    module.hparams.kl_beta = KL_BETA
    with torch.no_grad():
        ours, naive = module.step_losses(batch).loss.item(), naive_loss(module.peft_model, batch, KL_BETA).item()
    module.train()
    return ours, naive


def time_tokens_section(args: argparse.Namespace, module, ours_opt, ours_sched) -> dict[str, float | str]:
    batch = make_batch(args.tp_batch, args.tp_length, args.device, seed=1, vocab=args.vocab)

    def ours_times() -> list[float]:
        for _ in range(args.warmup):
            ours_step(module, ours_opt, ours_sched, batch, 0.0)
        return [timed(lambda: ours_step(module, ours_opt, ours_sched, batch, 0.0), args.device)
                for _ in range(args.tp_repeats)]

    ours = ours_times()
    results: dict[str, float | str] = {}
    trainer_end_times = run_trainer(args, args.warmup + args.tp_repeats)
    results["Trainer + peft β=0"] = statistics.median(_intervals(trainer_end_times, args.warmup))
    reason = sft_skip_reason()
    if reason is None:
        sft_end_times = run_sft_trainer(args, args.warmup + args.tp_repeats)
        results[SFT] = statistics.median(_intervals(sft_end_times, args.warmup))
    else:
        results[SFT] = reason
    ours += ours_times()  # before and after the Trainer runs, pooled
    results["ours β=0 (tokens)"] = statistics.median(ours)
    return results


def _intervals(end_times: list[float], warmup: int) -> list[float]:
    """Step times from the on_step_end times: the intervals after the warm-up steps."""
    measured = end_times[max(warmup - 1, 0):]
    return [later - earlier for earlier, later in zip(measured, measured[1:], strict=False)]


# ---- peak memory, one fresh process per configuration ---------------------------------------------
def peak_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--only", name, "--model-dir", str(args.model_dir)] + _forwarded(args)
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {name!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: two steps of one configuration; prints its peak memory as a JSON line."""
    name, baseline = args.only, {}

    def start(model: torch.nn.Module) -> None:
        # from_pretrained maps the safetensors file: weights become resident only when first read, which
        # would count 2 GB of 0.5B-shaped weights as step memory. Read them all before the baseline.
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.data.sum()
        sync(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            baseline["bytes"] = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            baseline["bytes"] = _proc_status_kib("VmRSS") * 1024

    if name in ("Trainer + peft β=0", SFT):
        (run_sft_trainer if name == SFT else run_trainer)(args, 2, on_first_step=start)
    else:
        module, ours_opt, ours_sched = build_ours(args)
        tokens_section = name.endswith("(tokens)")
        batch = make_batch(*((args.tp_batch, args.tp_length) if tokens_section else (args.batch, args.length)),
                           args.device, vocab=args.vocab)
        beta = KL_BETA if f"β={KL_BETA:g}" in name else 0.0
        naive_opt = build_naive_optimizer(module) if name.startswith("naive") else None

        def step() -> float:
            if naive_opt is None:
                return ours_step(module, ours_opt, ours_sched, batch, beta)
            return naive_step(module.peft_model, naive_opt, batch, beta)

        start(module.peft_model)
        step()
        step()
    sync(args.device)
    total = torch.cuda.max_memory_allocated() if args.device == "cuda" else _proc_status_kib("VmHWM") * 1024
    print(json.dumps({"config": name, "step_mb": (total - baseline["bytes"]) / 2**20, "total_mb": total / 2**20}))


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


# ---- report --------------------------------------------------------------------------------------
def print_report(args: argparse.Namespace, times: dict[str, float | str], memory: dict[str, dict],
                 losses: tuple[float, float] | None, loss_path: str) -> None:
    print(f"machine: {platform.platform()}, {_processor()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"device {args.device}, dtype {args.dtype}, model {args.model} ({_describe_model(args)}), "
          f"LoRA r={LORA['r']} α={LORA['lora_alpha']} all-linear; our LM-head loss path: {loss_path}")
    print("command: " + " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]]))
    print(f"medians of {args.repeats} steps (tokens section: {args.tp_repeats} per run) after {args.warmup} "
          f"warm-up; peak memory: " + ("cuda max_memory_allocated" if args.device == "cuda" else
                                       "VmHWM − VmRSS over two steps, fresh process each") + "\n")
    print("| configuration | B × T | ms / step | corpus tokens / s | step MB | total MB | time × baseline "
          "| memory × baseline | baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    if "beta" in args.sections:
        shape = _shape(args.batch, args.length, ISSUE_BETA_TOKENS)
        rows += [(f"naive β={KL_BETA:g}", shape, None), (f"ours β={KL_BETA:g}", shape, f"naive β={KL_BETA:g}"),
                 ("naive β=0", shape, None), ("ours β=0", shape, "naive β=0")]
    if "tokens" in args.sections:
        shape = _shape(args.tp_batch, args.tp_length, ISSUE_TP_SHAPE[0] * ISSUE_TP_SHAPE[1])
        rows += [("Trainer + peft β=0", shape, None), (SFT, shape, "Trainer + peft β=0"),
                 ("ours β=0 (tokens)", shape, "Trainer + peft β=0")]
    for name, shape, baseline in rows:
        seconds, tokens = times[name], shape[0] * shape[1]
        if isinstance(seconds, str):
            print(f"| {name} | {shape[2]} | skipped: {seconds} | | | | | | |")
            continue
        mem = memory.get(name, {})
        time_ratio = mem_ratio = "1.00" if baseline is None else ""
        if baseline is not None and not isinstance(times[baseline], str):
            time_ratio = f"{seconds / times[baseline]:.2f}"
            mem_ratio = f"{mem.get('step_mb', 0) / max(memory.get(baseline, {}).get('step_mb', 0), 1e-9):.2f}"
        print(f"| {name.replace(' (tokens)', '')} | {shape[2]} | {seconds * 1e3:,.0f} | {tokens / seconds:,.0f} "
              f"| {mem.get('step_mb', float('nan')):,.0f} | {mem.get('total_mb', float('nan')):,.0f} "
              f"| {time_ratio} | {mem_ratio} | {baseline or '—'} |")
    print()
    if losses is not None:
        print(f"same objective: β={KL_BETA:g} loss at the same weights (eval mode), ours {losses[0]:.6f}, "
              f"naive {losses[1]:.6f}")
    if "beta" in args.sections:
        ours_kl, naive_kl = times[f"ours β={KL_BETA:g}"], times[f"naive β={KL_BETA:g}"]
        print(f"KL step's cost over a plain step (β={KL_BETA:g} / β=0, time): ours "
              f"{ours_kl / times['ours β=0']:.2f}×, naive {naive_kl / times['naive β=0']:.2f}×")
        mem_ratio = memory[f"ours β={KL_BETA:g}"]["step_mb"] / memory[f"naive β={KL_BETA:g}"]["step_mb"]
        judged = args.batch * args.length == ISSUE_BETA_TOKENS
        print(f"target: ours β={KL_BETA:g} ≤ {TARGETS['time']}× naive time per corpus token: "
              f"{ours_kl / naive_kl:.2f}× {_verdict(ours_kl / naive_kl <= TARGETS['time'], judged)}; "
              f"≤ {TARGETS['memory']:.0%} of naive peak memory: {mem_ratio:.0%} "
              f"{_verdict(mem_ratio <= TARGETS['memory'], judged)}")
    if "tokens" in args.sections:
        speedup = times["Trainer + peft β=0"] / times["ours β=0 (tokens)"]
        judged = (args.tp_batch, args.tp_length) == ISSUE_TP_SHAPE
        print(f"target: ours β=0 tokens/s ≥ {TARGETS['tokens_per_s']}× Trainer + peft: {speedup:.2f}× "
              f"{_verdict(speedup >= TARGETS['tokens_per_s'], judged)}")


def _shape(batch: int, length: int, issue_tokens: int) -> tuple[int, int, str]:
    label = f"{batch} × {length}"
    if batch * length != issue_tokens:
        label += f" (reduced from {issue_tokens:,} tokens)" if batch * length < issue_tokens else " (not the issue's)"
    return batch, length, label


def _verdict(met: bool, judged: bool) -> str:
    """Targets are set at the issue's shapes; at another B·T the ratio is reported, not judged."""
    if not judged:
        return "(not judged: the target is set at the issue's B × T)"
    return "(met)" if met else "(MISSED)"


def _describe_model(args: argparse.Namespace) -> str:
    config = json.loads((args.model_dir / "config.json").read_text())
    config = config.get("text_config", config)
    origin = "random weights" if args.model in SHAPES else f"pretrained, {args.model_dir}"
    return (f"{config.get('model_type')}, hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, "
            f"{config['num_attention_heads']}/{config.get('num_key_value_heads')} heads, intermediate "
            f"{config['intermediate_size']}, V = {args.vocab:,}, "
            f"{'tied' if config.get('tie_word_embeddings', True) else 'untied'}, {origin}")


def _processor() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


# ---- main ----------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    if args.only:
        args.vocab = _vocab_size(args.model_dir)
        memory_child(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        args.model_dir = _model_folder(args.model, Path(folder))
        args.vocab = _vocab_size(args.model_dir)
        for batch, length in args.shapes or [(None, None)]:
            if batch is not None:  # --shapes: both sections at this B × T
                args.batch = args.tp_batch = batch
                args.length = args.tp_length = length
            run_shape(args)


def run_shape(args: argparse.Namespace) -> None:
    """Both sections at the current shapes, in this process; then the memory children; then the table."""
    module, ours_opt, ours_sched = build_ours(args)
    head = module.causal_lm().get_output_embeddings()
    loss_path = _loss_path(head)
    times: dict[str, float | str] = {}
    losses = None
    if "beta" in args.sections:
        times |= time_beta_section(args, module, ours_opt, ours_sched, build_naive_optimizer(module))
        losses = check_losses_agree(args, module)
    if "tokens" in args.sections:
        times |= time_tokens_section(args, module, ours_opt, ours_sched)
    del module, ours_opt, ours_sched
    memory = {} if args.no_memory else {name: peak_memory(name, args) for name, value in times.items()
                                        if not isinstance(value, str)}
    print_report(args, times, memory, losses, loss_path)


def _loss_path(head: torch.nn.Module) -> str:
    from wuxia_lightning.objectives.losses import trained_token_rows

    if type(head) is torch.nn.Linear:
        return "fused (plain nn.Linear head)"
    if trained_token_rows(head) is not None:
        return "fused (tied head with trained new-token rows)"
    return "checkpointed"


def _model_folder(model: str, scratch: Path) -> Path:
    """A shape name → a random model saved under ``scratch``; anything else → the folder ``--model.
    model_name_or_path`` would load (a GGUF file or ``gemma3-270m`` through the conversion cache)."""
    if model in SHAPES:
        save_model_folder(model, scratch)
        return scratch
    from wuxia_lightning.pretrained.tiny import resolve_model_path

    return Path(resolve_model_path(model))


def _vocab_size(folder: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    return getattr(config, "vocab_size", None) or config.get_text_config().vocab_size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny",
                        help=f"{' | '.join(SHAPES)} (random weights), or a real base: a model folder, a .gguf "
                             "file, gemma3-270m (the packaged GGUF)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: bfloat16 on a GPU that supports it, float32 otherwise")
    parser.add_argument("--batch", type=int, default=None, help="section beta: B (default 8; 1 for 0.5B on CPU)")
    parser.add_argument("--length", type=int, default=None, help="section beta: T (default 256)")
    parser.add_argument("--tp-batch", type=int, default=None, help="section tokens: B (default 4; 1 for 0.5B on CPU)")
    parser.add_argument("--tp-length", type=int, default=256, help="section tokens: T")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tp-repeats", type=int, default=5, help="section tokens: steps per run")
    parser.add_argument("--sections", nargs="+", choices=("beta", "tokens"), default=["beta", "tokens"])
    parser.add_argument("--shapes", nargs="+", type=_batch_shape, default=None, metavar="BxT",
                        help="run both sections at each of these shapes in turn (e.g. 4x128 4x256), one table each")
    parser.add_argument("--no-memory", action="store_true",
                        help="times only (e.g. under MALLOC_MMAP_MAX_=0, where freed memory stays with the process)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.dtype == "auto":
        use_bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
        args.dtype = "bfloat16" if use_bf16 else "float32"
    reduced = args.model == "qwen2.5-0.5b-shaped" and args.device == "cpu"  # 0.5B at 2,048 tokens: minutes
    args.batch = args.batch or (1 if reduced else 8)
    args.length = args.length or 256
    args.tp_batch = args.tp_batch or (1 if reduced else ISSUE_TP_SHAPE[0])
    return args


def _batch_shape(text: str) -> tuple[int, int]:
    batch, _, length = text.lower().partition("x")
    if not (batch.isdigit() and length.isdigit()):
        raise argparse.ArgumentTypeError(f"expected BxT such as 4x128, got {text!r}")
    return int(batch), int(length)


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
            "--length", str(args.length), "--tp-batch", str(args.tp_batch), "--tp-length", str(args.tp_length)]


if __name__ == "__main__":
    main()
