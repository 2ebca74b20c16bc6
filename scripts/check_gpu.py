#!/usr/bin/env python
"""Report what this machine offers for training: torch, CUDA devices and memory, bf16, bitsandbytes 4-bit.

    python scripts/check_gpu.py            # a readable table
    python scripts/check_gpu.py --test     # plus a matmul benchmark (GFLOP/s) on the best device
    python scripts/check_gpu.py --json     # the same facts as JSON

The 4-bit check runs a real nf4 ``bitsandbytes.nn.Linear4bit`` forward on the best device (bitsandbytes
also runs on CPUs) and compares it with the full-precision layer, so "ok" means QLoRA can work here,
not merely that the package imports. On a machine without CUDA everything still runs and says so.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any

import torch

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.io import strict_json

GIB = 1024 ** 3
# nf4 keeps 16 levels per block of 64 weights: the output of a random layer is off by ~10% (relative L2).
# Far beyond that the kernel is broken, not merely lossy.
MAX_4BIT_REL_ERROR = 0.3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="run a matmul benchmark on the best device")
    parser.add_argument("--size", type=int, default=None,
                        help="matrix size of the benchmark (default: 4096 on a GPU, 1024 on a CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)  # before bitsandbytes is imported: it logs on import
    if args.size is not None and args.size < 1:
        print(f"error: --size must be a positive integer, got {args.size}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
