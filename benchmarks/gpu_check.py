"""One prepared GPU check: the fused loss against the naive one (and Liger's), then stage-1 steps through
``wuxia fit`` and through HF Trainer + peft. Run it through ``benchmarks/gpu_check.sh OUT_DIR``.

    python benchmarks/gpu_check.py --out OUT_DIR [--device cuda|cpu]

Nothing is downloaded: models are random with real shapes, the corpus is the repository's sample.

1. Loss (LM head + CE + β·KL(policy ‖ reference), forward and backward, frozen head as under LoRA) at
   B·T = 1k / 4k / 8k rows, vocabulary 151,936, hidden 896 (Qwen2.5-0.5B), bf16 inputs:
     ours    ``fused_ce_kl`` (chunks of 256 rows, logits in fp32)
     naive   full B·T×V logits, ``cross_entropy`` + full-vocabulary KL, the reference under no_grad
     Liger   ``liger_kernel.chunked_loss.LigerFusedLinearJSDLoss(weight_hard_loss=1, weight_soft_loss=β,
             beta=1)`` when liger-kernel imports: beta = 1 is its KL(student ‖ teacher), i.e. ours
   time per call (median of 5 after 2 warm-ups) and peak memory above what was allocated before.
2. Training: 20 stage-1 steps of a Qwen2.5-0.5B-shaped random model (LoRA r 16 all-linear, bf16 weights,
   bf16-mixed, 8 × 512 tokens) through ``wuxia fit`` at β = 0 and β = 0.1 (tokens/s from the module's own
   ``train/tokens_per_s``, median after 3 steps), and the same model, LoRA and batch through
   ``transformers.Trainer`` + peft (median step interval); peak GPU memory of each (weights included).

``--device cpu`` runs the same code at reduced sizes (rows 64 / 128, hidden 64; a 2-layer hidden-64 model,
3 steps of 2 × 64 tokens), marked "reduced" in the output: for CI, not for numbers.
Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from bench_training_step import run_trainer, save_model_folder
from timing import sync, timed

REPO = Path(__file__).resolve().parents[1]
VOCAB, BETA = 151_936, 0.1
FULL = {"rows": (1024, 4096, 8192), "hidden": 896, "dtype": "bfloat16", "model": "qwen2.5-0.5b-shaped",
        "batch": 8, "length": 512, "steps": 20, "warmup": 2, "repeats": 5}
REDUCED = {"rows": (64, 128), "hidden": 64, "dtype": "float32", "model": "tiny", "batch": 2, "length": 64,
           "steps": 3, "warmup": 1, "repeats": 2}


# ---- 1. the loss alone ---------------------------------------------------------------------------
def loss_inputs(rows: int, hidden: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(rows)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen) * scale).to(device, dtype)  # noqa: E731
    return {"hidden": make(rows, hidden).requires_grad_(), "ref_hidden": make(rows, hidden),
            "head": make(VOCAB, hidden, scale=hidden ** -0.5),
            "targets": torch.randint(0, VOCAB, (rows,), generator=gen).to(device)}


def ours(x: dict[str, torch.Tensor]) -> torch.Tensor:
    from wuxia_lightning.objectives.fused_loss import fused_ce_kl

    weights = torch.ones(len(x["targets"]), device=x["hidden"].device, dtype=x["hidden"].dtype)
    ce, kl, _ = fused_ce_kl(x["hidden"], x["targets"], weights, x["head"], None, x["ref_hidden"])
    return (ce + BETA * kl) / len(x["targets"])


def naive(x: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = (x["hidden"] @ x["head"].T).float()
    with torch.no_grad():
        log_q = torch.log_softmax((x["ref_hidden"] @ x["head"].T).float(), dim=-1)
    log_p = torch.log_softmax(logits, dim=-1)
    kl = torch.nn.functional.kl_div(log_q, log_p, reduction="batchmean", log_target=True)  # KL(p ‖ q)
    return torch.nn.functional.cross_entropy(logits, x["targets"]) + BETA * kl


def liger() -> Callable[[dict[str, torch.Tensor]], torch.Tensor] | str:
    """Liger's fused distillation loss, or why it cannot run here."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except Exception as error:  # noqa: BLE001 - any import failure (no package, no triton, no GPU) is a reason
        return f"liger-kernel unavailable: {type(error).__name__}: {str(error)[:80]}"
    loss = LigerFusedLinearJSDLoss(weight_hard_loss=1.0, weight_soft_loss=BETA, beta=1.0, temperature=1.0)
    return lambda x: loss(x["hidden"], x["head"], x["ref_hidden"], x["head"], x["targets"])


def time_and_peak(fn: Callable[[dict], torch.Tensor], x: dict, device: str, warmup: int, repeats: int
                  ) -> tuple[float, float, float]:
    """(median seconds of forward + backward, peak MB above the inputs, the loss value)."""
    def call() -> float:
        x["hidden"].grad = None
        loss = fn(x)
        loss.backward()
        return loss.item()

    for _ in range(warmup):
        value = call()
    before = _memory_mark(device)
    value = call()
    peak = _peak_since(device, before)
    seconds = statistics.median(timed(call, device) for _ in range(repeats))
    return seconds, peak, value


def loss_section(sizes: dict, device: str) -> list[dict]:
    dtype = getattr(torch, sizes["dtype"])
    candidates = {"ours (fused)": ours, "naive (full logits)": naive, "Liger FusedLinearJSDLoss": liger()}
    rows = []
    for n in sizes["rows"]:
        x = loss_inputs(n, sizes["hidden"], dtype, device)
        for name, fn in candidates.items():
            if isinstance(fn, str):
                rows.append({"section": "loss", "config": name, "rows": n, "skipped": fn})
                continue
            seconds, peak, value = time_and_peak(fn, x, device, sizes["warmup"], sizes["repeats"])
            rows.append({"section": "loss", "config": name, "rows": n, "ms": seconds * 1e3, "peak_mb": peak,
                         "loss": value})
        del x
        _empty_cache(device)
    return rows


# ---- 2. training steps ---------------------------------------------------------------------------
def fit_config(model_dir: Path, out: Path, beta: float, sizes: dict, device: str) -> dict:
    """A stage-1 config as a user would write it for this GPU (the 7B QLoRA config's precision, no 4-bit)."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1,
                    "precision": "bf16-mixed" if sizes["dtype"] == "bfloat16" else "32-true",
                    "max_steps": sizes["steps"], "max_epochs": -1, "log_every_n_steps": 1,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_model_summary": False,
                    "enable_checkpointing": False, "default_root_dir": str(out),
                    "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": str(out), "name": "csv"}}]},
        "model": {"class_path": "wuxia_lightning.modules.style.StyleAlignmentModule",
                  "init_args": {"model_name_or_path": str(model_dir), "kl_beta": beta, "lora_r": 16,
                                "lora_alpha": 32, "lora_dropout": 0.05, "dtype": sizes["dtype"],
                                "learning_rate": 2e-4, "warmup_steps": 2, "output_dir": str(out / "adapter")}},
        "data": {"class_path": "wuxia_lightning.data.style_datamodule.StyleDataModule",
                 "init_args": {"corpus": str(REPO / "data/sample/style"), "max_length": sizes["length"],
                               "batch_size": sizes["batch"], "val_fraction": 0.1,
                               "cache_dir": str(out / "tokens")}},
    }


def run_wuxia_fit(model_dir: Path, beta: float, sizes: dict, device: str, scratch: Path) -> dict:
    from wuxia_lightning.cli import main as wuxia

    out = scratch / f"fit-beta{beta:g}"
    out.mkdir()
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(fit_config(model_dir, out, beta, sizes, device)))
    before = _memory_mark(device)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees this script's own arguments
    try:
        wuxia(["fit", "--config", str(config)])
    finally:
        sys.argv = argv
    peak = _peak_since(device, before)
    rates = _logged_rates(out / "csv")
    measured = rates[min(3, len(rates) - 1):]
    return {"section": "training", "config": f"wuxia fit β={beta:g}", "tokens_per_s": statistics.median(measured),
            "peak_mb": peak, "steps": len(rates)}


def _logged_rates(folder: Path) -> list[float]:
    import csv

    (metrics,) = folder.glob("version_*/metrics.csv")
    with metrics.open() as handle:
        return [float(row["train/tokens_per_s"]) for row in csv.DictReader(handle) if row.get("train/tokens_per_s")]


def run_hf_trainer(model_dir: Path, sizes: dict, device: str) -> dict:
    args = argparse.Namespace(model_dir=model_dir, tp_batch=sizes["batch"], tp_length=sizes["length"],
                              device=device, dtype=sizes["dtype"], vocab=VOCAB,
                              hf_bf16=sizes["dtype"] == "bfloat16")
    before = _memory_mark(device)
    end_times = run_trainer(args, sizes["steps"])
    peak = _peak_since(device, before)
    intervals = [b - a for a, b in zip(end_times, end_times[1:], strict=False)]
    intervals = intervals[min(2, len(intervals) - 1):]  # the first steps warm up (as for wuxia fit)
    return {"section": "training", "config": "HF Trainer + peft β=0",
            "tokens_per_s": sizes["batch"] * sizes["length"] / statistics.median(intervals), "peak_mb": peak,
            "steps": len(end_times)}


def training_section(sizes: dict, device: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model_dir = scratch / "model"
        save_model_folder(sizes["model"], model_dir)
        rows = [run_wuxia_fit(model_dir, beta, sizes, device, scratch) for beta in (0.0, BETA)]
        rows.append(run_hf_trainer(model_dir, sizes, device))
    return rows


# ---- memory --------------------------------------------------------------------------------------
def _memory_mark(device: str) -> float:
    """Resets the peak and returns the current use (MB): on CUDA allocated bytes, on CPU the resident set."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _proc_kib("VmRSS") / 1024


def _peak_since(device: str, before: float) -> float:
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _proc_kib("VmHWM") / 1024
    return peak - before


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


def _empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- report --------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [f"# GPU check — {result['device_name']}", "",
             f"torch {result['torch']}, {result['mode']}; command `{result['command']}`", "",
             "| section | configuration | size | ms / call | tokens / s | peak MB | × naive or × Trainer |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        size = f"{row['rows']:,} rows" if row["section"] == "loss" else f"{row.get('steps', '')} steps"
        if "skipped" in row:
            lines.append(f"| {row['section']} | {row['config']} | {size} | skipped: {row['skipped']} | | | |")
            continue
        ms = f"{row['ms']:,.1f}" if "ms" in row else ""
        rate = f"{row['tokens_per_s']:,.0f}" if "tokens_per_s" in row else ""
        lines.append(f"| {row['section']} | {row['config']} | {size} | {ms} | {rate} | {row['peak_mb']:,.0f} "
                     f"| {row.get('ratio', '')} |")
    return "\n".join(lines) + "\n"


def add_ratios(rows: list[dict]) -> None:
    """Loss rows against naive at the same size (time, memory); training rows against HF Trainer (tokens/s)."""
    naive_rows = {r["rows"]: r for r in rows if r["config"].startswith("naive") and "ms" in r}
    trainer = next((r for r in rows if r["config"].startswith("HF Trainer")), None)
    for row in rows:
        if row["section"] == "loss" and "ms" in row and row["rows"] in naive_rows:
            base = naive_rows[row["rows"]]
            row["ratio"] = (f"time {row['ms'] / base['ms']:.2f}×, memory "
                            f"{row['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}×")
        elif row["section"] == "training" and trainer is not None:
            row["ratio"] = f"tokens/s {row['tokens_per_s'] / trainer['tokens_per_s']:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu for the reduced run")
    if (args.out / "gpu_check.json").exists():  # a measured result is not overwritten by accident
        parser.exit(2, f"{args.out / 'gpu_check.json'}: exists; pass a new OUT_DIR\n")
    sizes = FULL if args.device == "cuda" else REDUCED
    started = time.perf_counter()
    rows = loss_section(sizes, args.device)
    loss_s = time.perf_counter() - started
    rows += training_section(sizes, args.device)
    add_ratios(rows)
    result = {"device": args.device, "mode": "full sizes" if sizes is FULL else "REDUCED sizes (CPU smoke run)",
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU",
              "torch": torch.__version__, "command": " ".join(sys.argv), "sizes": sizes, "rows": rows,
              "wall_s": time.perf_counter() - started, "loss_section_s": loss_s}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    table = markdown(result)
    (args.out / "gpu_check.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
