#!/usr/bin/env python
"""Report what this machine offers for training: torch, CUDA devices and memory, bf16, bitsandbytes 4-bit.

    python scripts/check_gpu.py            # a readable table
    python scripts/check_gpu.py --test     # plus a matmul benchmark (GFLOP/s) on the best device
    python scripts/check_gpu.py --json     # the same facts as JSON
    python scripts/check_gpu.py --config configs/qwen2.5-7b_style_qlora.yaml --gpu-memory-gb 24
                                           # will this training config fit? (estimated peak memory)

The 4-bit check runs a real nf4 ``bitsandbytes.nn.Linear4bit`` forward on the best device (bitsandbytes
also runs on CPUs) and compares it with the full-precision layer, so "ok" means QLoRA can work here,
not merely that the package imports. On a machine without CUDA everything still runs and says so.

``--config`` (repeatable, like ``wuxia fit --config``) estimates instead the peak GPU memory of one training
step of that config, split into base weights, adapters, gradients, optimizer state, activations (with and
without gradient checkpointing) and the loss chunk (``wuxia_lightning.memory_estimate``), for the model's real
dimensions: its local ``config.json``, the Hugging Face cache, or a table of published Qwen configs shipped
with the package. It loads no weights, so it answers on any machine, before the first step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.errors import UserInputError, report_user_error
from wuxia_lightning.io import strict_json
from wuxia_lightning.memory_estimate import (
    MemoryEstimate,
    ModelDims,
    estimate,
    plan_from_config,
    read_model_config,
)

GIB = 1024 ** 3
# nf4 keeps 16 levels per block of 64 weights: the output of a random layer is off by ~10% (relative L2).
# Far beyond that the kernel is broken, not merely lossy.
MAX_4BIT_REL_ERROR = 0.3
# Without a GPU here and without --gpu-memory-gb, judge against the card the shipped 7B/8B configs target.
DEFAULT_BUDGET_GIB = 24.0
# Within this share of the budget the estimate's own margin decides: say "tight", not "fits".
TIGHT_SHARE = 0.9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="run a matmul benchmark on the best device")
    parser.add_argument("--size", type=int, default=None,
                        help="matrix size of the benchmark (default: 4096 on a GPU, 1024 on a CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--config", action="append", metavar="CONFIG.yaml",
                        help="estimate the peak GPU memory of training with this LightningCLI config; repeat to "
                             "add overlays, later files win (as with `wuxia fit --config A --config B`)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, metavar="GIB",
                        help="judge the estimate against this much GPU memory in GiB (a '24 GB' card: 24); "
                             f"default: the detected GPU, else {DEFAULT_BUDGET_GIB:g}")
    parser.add_argument("--model-config", metavar="config.json",
                        help="the model's config.json, for a model that is neither a local folder nor known")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)  # before bitsandbytes is imported: it logs on import
    if args.size is not None and args.size < 1:
        print(f"error: --size must be a positive integer, got {args.size}", file=sys.stderr)
        return 2
    if args.gpu_memory_gb is not None and not args.gpu_memory_gb > 0:
        print(f"error: --gpu-memory-gb must be a positive number, got {args.gpu_memory_gb}", file=sys.stderr)
        return 2
    if args.config:
        return memory_main(args)
    report = collect(run_benchmark=args.test, size=args.size)
    print(strict_json(report, indent=2) if args.json else format_table(report))
    return 0


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def collect(run_benchmark: bool = False, size: int | None = None) -> dict[str, Any]:
    device = best_device()
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "devices": cuda_devices(),
        "best_device": device,
        "bf16": bf16_support(device),
        "bitsandbytes": bitsandbytes_check(device),
    }
    if run_benchmark:
        report["benchmark"] = matmul_benchmark(device, size or (4096 if device == "cuda" else 1024))
    return report


def cuda_devices() -> list[dict[str, Any]]:
    devices = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                        "total_memory_gib": round(total / GIB, 2), "free_memory_gib": round(free / GIB, 2)})
    return devices


def bf16_support(device: str) -> dict[str, Any]:
    """Whether bf16 works on ``device``: CUDA's own answer, or a bf16 matmul that runs on the CPU."""
    if device == "cuda":
        return {"device": device, "supported": bool(torch.cuda.is_bf16_supported())}
    try:
        a = torch.randn(16, 16, dtype=torch.bfloat16)
        supported = bool(torch.isfinite(a @ a).all())
    except RuntimeError:
        supported = False
    return {"device": device, "supported": supported}


def bitsandbytes_check(device: str) -> dict[str, Any]:
    try:
        import bitsandbytes as bnb
    except Exception as error:  # a broken install raises more than ImportError (missing CUDA libraries)
        return {"installed": False, "version": None, "error": f"{type(error).__name__}: {error}",
                "linear4bit": None}
    return {"installed": True, "version": bnb.__version__, "error": None,
            "linear4bit": linear4bit_forward(bnb, device)}


def linear4bit_forward(bnb, device: str, features: int = 128) -> dict[str, Any]:
    """Quantise a small random layer to nf4, run a forward, compare with the full-precision layer."""
    torch.manual_seed(0)
    reference = torch.nn.Linear(features, features).to(device)
    layer = bnb.nn.Linear4bit(features, features, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(reference.weight.detach().cpu().clone(), requires_grad=False,
                                     quant_type="nf4")
    layer.bias = torch.nn.Parameter(reference.bias.detach().cpu().clone(), requires_grad=False)
    try:
        layer = layer.to(device)  # moving Params4bit to its device is what quantises the weights
        x = torch.randn(4, features, device=device)
        with torch.no_grad():
            out, expected = layer(x), reference(x)
        error = float((out - expected).norm() / expected.norm())
    except Exception as exc:  # any failure of the kernel is the answer we report
        return {"device": device, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    quantised = layer.weight.dtype == torch.uint8
    ok = quantised and error == error and error < MAX_4BIT_REL_ERROR  # error == error: not NaN
    return {"device": device, "ok": ok, "quantised": quantised, "relative_error": round(error, 4),
            "error": None}


def matmul_benchmark(device: str, size: int, repeats: int = 5) -> list[dict[str, Any]]:
    """GFLOP/s of a size×size matmul per dtype (2·n³ flops each), after one warm-up."""
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    return [timed_matmul(device, size, dtype, repeats) for dtype in dtypes]


def timed_matmul(device: str, size: int, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    synchronize(device)
    a @ b  # warm-up: kernel selection and allocation are not what we measure
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    seconds = time.perf_counter() - start
    gflops = 2 * size ** 3 * repeats / seconds / 1e9
    return {"device": device, "dtype": str(dtype).replace("torch.", ""), "size": size,
            "seconds": round(seconds, 4), "gflops": round(gflops, 1)}


def synchronize(device: str) -> None:
    if device == "cuda":  # CUDA kernels run asynchronously: time them only after they finish
        torch.cuda.synchronize()


def format_table(report: dict[str, Any]) -> str:
    rows = [("python", report["python"]), ("torch", report["torch"]),
            ("CUDA available", yes_no(report["cuda_available"]) + ("" if report["cuda_available"]
                                                                   else " (CPU only)")),
            ("CUDA version", report["cuda_version"] or "-")]
    for dev in report["devices"]:
        rows.append((f"cuda:{dev['index']}", f"{dev['name']} (sm {dev['capability']}), "
                                             f"{dev['free_memory_gib']:.1f} / {dev['total_memory_gib']:.1f} GiB free"))
    rows.append((f"bf16 on {report['bf16']['device']}", yes_no(report["bf16"]["supported"])))
    rows += bitsandbytes_rows(report["bitsandbytes"])
    for bench in report.get("benchmark", []):
        rows.append((f"matmul {bench['dtype']} {bench['size']}² on {bench['device']}",
                     f"{bench['gflops']:,.1f} GFLOP/s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def bitsandbytes_rows(bnb: dict[str, Any]) -> list[tuple[str, str]]:
    if not bnb["installed"]:
        return [("bitsandbytes", f"not usable: {bnb['error']}")]
    check = bnb["linear4bit"]
    if check["error"]:
        result = f"fails: {check['error']}"
    else:
        result = f"{'ok' if check['ok'] else 'WRONG'} (relative error {check['relative_error']:.3f})"
    return [("bitsandbytes", bnb["version"]), (f"4-bit nf4 Linear4bit on {check['device']}", result)]


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


# ---- --config: will it fit? ------------------------------------------------------------------------
def memory_main(args: argparse.Namespace) -> int:
    try:
        report = memory_report(args.config, args.gpu_memory_gb, args.model_config)
    except UserInputError as error:
        return report_user_error(error)
    print(strict_json(report, indent=2) if args.json else format_memory_table(report))
    return 0


def memory_report(paths: list[str], gpu_memory_gib: float | None = None,
                  model_config: str | None = None) -> dict[str, Any]:
    """The estimate for ``paths`` (merged in order) with and without gradient checkpointing, and a verdict."""
    plan = plan_from_config(read_configs(paths))
    config, source = read_json_config(model_config) if model_config else read_model_config(plan.model_name_or_path)
    try:
        dims = ModelDims.from_config(config)
    except KeyError as missing:
        raise UserInputError(f"the model config has no {missing} field", path=source) from missing
    estimates = {"with_checkpointing": estimate(dims, replace(plan.settings, gradient_checkpointing=True)),
                 "without_checkpointing": estimate(dims, replace(plan.settings, gradient_checkpointing=False))}
    budget_gib, budget_source = memory_budget(gpu_memory_gib)
    configured = "with_checkpointing" if plan.settings.gradient_checkpointing else "without_checkpointing"
    return {"configs": list(paths), "stage": plan.stage, "model": plan.model_name_or_path,
            "model_config": source, "dims": asdict(dims), "settings": asdict(plan.settings),
            "notes": list(plan.notes), "configured": configured,
            "estimates": {name: e.as_dict() for name, e in estimates.items()},
            "budget": {"bytes": round(budget_gib * GIB), "gib": budget_gib, "source": budget_source},
            "verdict": {name: verdict(e.total, budget_gib * GIB) for name, e in estimates.items()}}


def read_configs(paths: list[str]) -> dict[str, Any]:
    """LightningCLI YAML files merged key by key, later files overriding earlier ones."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as error:
            raise UserInputError(f"cannot read the config: {error.strerror}", path=path) from error
        except yaml.YAMLError as error:
            raise UserInputError(f"not valid YAML: {' '.join(str(error).split())}", path=path) from error
        if not isinstance(data, dict):
            raise UserInputError("a config must be a YAML mapping (trainer:, model:, data:)", path=path)
        merged = merge(merged, data)
    return merged


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else value
    return out


def read_json_config(path: str) -> tuple[dict[str, Any], str]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")), path
    except (OSError, ValueError) as error:
        raise UserInputError(f"not a readable config.json: {error}", path=path) from error


def memory_budget(gpu_memory_gib: float | None) -> tuple[float, str]:
    """GiB to judge against, and where that number comes from."""
    if gpu_memory_gib is not None:
        return gpu_memory_gib, "--gpu-memory-gb"
    devices = cuda_devices()
    if devices:
        return devices[0]["total_memory_gib"], f"cuda:0 {devices[0]['name']}"
    return DEFAULT_BUDGET_GIB, "assumed, no CUDA device here; set --gpu-memory-gb"


def verdict(total: int, budget: float) -> str:
    if total > budget:
        return "does not fit"
    return "tight" if total > TIGHT_SHARE * budget else "fits"


def memory_rows(e: MemoryEstimate, settings: dict[str, Any]) -> list[tuple[str, int]]:
    """(label, bytes) in table order; the working set counts once, the larger of its two phases."""
    quantised = "nf4 linears + " if settings["quantization"] == "4bit" else ""
    adapter = settings["adapter_dtype"]
    forward = e.forward_end
    return [(f"base weights ({quantised}{settings['dtype']})", e.base_weights),
            (f"LoRA adapters ({adapter})", e.adapters), (f"gradients ({adapter})", e.gradients),
            (f"AdamW moments (2 x {adapter})", e.optimizer), ("activations kept for backward", e.activations),
            ("working set, the larger of:", e.working_set),
            (f"  forward end: loss chunk logits ({settings['loss_chunk_size']} x vocab, fp32)",
             forward["chunk_logits"]),
            ("  forward end: LM head upcast to fp32", forward["lm_head_fp32"]),
            ("  forward end: hidden states + loss gradient pieces",
             forward["hidden_states"] + forward["gradient_pieces"]),
            ("  backward: recomputed layer + temporaries", sum(e.backward.values())),
            ("CUDA context + allocator slack", e.gpu_overhead), ("total (estimated peak)", e.total)]


def format_memory_table(report: dict[str, Any]) -> str:
    with_ckpt, without = (report["estimates"][k] for k in ("with_checkpointing", "without_checkpointing"))
    rows = list(zip(memory_rows(_as_estimate(with_ckpt), report["settings"]),
                    memory_rows(_as_estimate(without), report["settings"]), strict=True))
    width = max(len(label) for (label, _), _ in rows)
    lines = [f"memory estimate for {' + '.join(report['configs'])}",
             f"model: {report['model']} (dimensions: {report['model_config']})",
             f"run:   {describe_run(report)}", "",
             f"{'component'.ljust(width)}  {'with ckpt':>9}  {'without':>9}  (GiB)"]
    lines += [f"{label.ljust(width)}  {a / GIB:9.2f}  {b / GIB:9.2f}" for (label, a), (_, b) in rows]
    budget = report["budget"]
    lines += ["", f"budget: {budget['gib']:g} GiB ({budget['source']})"]
    for name, label in (("with_checkpointing", "with"), ("without_checkpointing", "without")):
        mark = " (as configured)" if name == report["configured"] else ""
        total = report["estimates"][name]["total"] / GIB
        lines.append(f"verdict {label} gradient checkpointing{mark}: {report['verdict'][name]} "
                     f"({total:.1f} of {budget['gib']:g} GiB)")
    return "\n".join(lines + [f"note: {note}" for note in report["notes"]])


def _as_estimate(values: dict[str, Any]) -> MemoryEstimate:
    keys = ("base_weights", "adapters", "gradients", "optimizer", "activations", "forward_end", "backward",
            "gpu_overhead", "details")
    return MemoryEstimate(**{key: values[key] for key in keys})


def describe_run(report: dict[str, Any]) -> str:
    s = report["settings"]
    passes = " + ".join(f"{p['batch_size']} x {p['length']} tokens" + (" (+ KL reference pass)" if p["reference"]
                                                                       else "") for p in s["passes"])
    base = "nf4" if s["quantization"] == "4bit" else s["dtype"]
    compute = f"autocast {s['autocast']}" if s["autocast"] else f"{s['dtype']} compute"
    frozen = f", frozen stage-1 adapter r={s['frozen_adapter_r']}" if s["frozen_adapter_r"] else ""
    targets = s["lora_target_modules"] if isinstance(s["lora_target_modules"], str) else ",".join(s["lora_target_modules"])
    return (f"stage {1 if report['stage'] == 'style' else 2} ({report['stage']}), {passes}; {base} base, {compute}; "
            f"LoRA r={s['lora_r']} {targets}{frozen}")


if __name__ == "__main__":
    sys.exit(main())
