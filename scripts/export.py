#!/usr/bin/env python
"""Export a trained folder for serving: one LoRA adapter (vLLM, SGLang, peft) or a merged model.

    python scripts/export.py --model outputs/qwen2.5-7b/stacked --format adapter --pad-rank-for vllm --out exports/wuxia-lora
    python scripts/export.py --model outputs/qwen2.5-7b/stacked --format merged --out exports/wuxia-7b
    python scripts/export.py --model outputs/quickstart/stacked --format merged --dtype float32 --out exports/tiny
    python scripts/export.py --model outputs/gemma3-270m/stacked --format gguf --out exports/wuxia-gguf

--model is a stacked stage-2 folder (style + instruct) or a stage-1 adapter folder (wuxia_manifest.json).

--format adapter writes ONE plain peft LoRA adapter equal to every adapter of the folder at once: their
ranks are concatenated (rank = r_style + r_instruct) and each adapter's scaling is folded into its B, so
adapter_config.json says lora_alpha == r. This is exact (no averaging). Serve it on the unmodified base,
e.g. ``vllm serve BASE --enable-lora --lora-modules wuxia=OUT --max-lora-rank R``. --pad-rank-for vllm
zero-pads the rank up to one vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512); that changes nothing.
rsLoRA, DoRA, trained embedding rows and saved full modules are refused: use --format merged for them.

--format merged writes a full model that loads with plain ``AutoModelForCausalLM.from_pretrained(OUT)``:
the base is loaded un-quantised (a folder trained on a 4-bit base merges into the full-precision base,
since merging into 4-bit weights rounds the result, peft issue 2321), the adapters are merged at their
scales, and the weights are saved in --dtype (the precision of the merge too).

Both formats include the tokenizer with its chat template, a generation_config.json whose eos_token_id
lists <|im_end|> (chat replies stop at the end of the turn) and wuxia_export.json (adapters, scales,
base model). --style-scale / --instruct-scale bake a style strength into the export (1 = as trained).
OUT is written atomically; an existing non-empty OUT is replaced only with --overwrite.

--format gguf writes OUT/<OUT name>-<type>.gguf for llama.cpp, llama-server, Ollama and LM Studio: the
merged model (merged in float32) converted by llama.cpp's own convert_hf_to_gguf.py, with the tokenizer,
chat template and end-of-turn token, plus an Ollama Modelfile. --gguf-type is f16 (default), q8_0, f32 or
bf16. The converter comes from --converter (a llama.cpp checkout or a llama-cpp-python sdist .tar.gz) or
from the llama-cpp-python sdist, downloaded once into the project cache. An existing OUT is never
overwritten. Character-level (WordLevel) tokenizers have no GGUF form and are refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.errors import UserInputError, report_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stacked stage-2 folder or stage-1 adapter folder")
    parser.add_argument("--format", required=True, choices=("adapter", "merged", "gguf"), dest="fmt",
                        help="adapter: one concatenated LoRA adapter; merged: full model with the adapters merged; "
                             "gguf: the merged model as one GGUF file for llama.cpp / Ollama")
    parser.add_argument("--out", required=True, help="folder to write (refused when non-empty, see --overwrite)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                        help="adapter/merged: precision of the saved weights (and of the merge) (default: "
                             "%(default)s); gguf merges in float32 and uses --gguf-type")
    # Checked by the export, not by argparse choices: a bad value is then one error line naming OUT.
    parser.add_argument("--gguf-type", default=None,
                        help="gguf only: f16 (default), q8_0, f32 or bf16")
    parser.add_argument("--converter", default=None,
                        help="gguf only: llama.cpp folder with convert_hf_to_gguf.py, or a llama-cpp-python sdist "
                             "(default: the sdist, downloaded once into the project cache)")
    parser.add_argument("--pad-rank-for", choices=("vllm",), default=None,
                        help="adapter only: zero-pad the rank up to a rank this server accepts (exact)")
    parser.add_argument("--style-scale", type=float, default=1.0,
                        help="multiply the style adapter's delta (1 = as trained; >1 stronger style)")
    parser.add_argument("--instruct-scale", type=float, default=1.0,
                        help="multiply the instruct adapter's delta (1 = as trained)")
    parser.add_argument("--base", default=None, help="base model to name/load instead of the manifest's one")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if quiet_third_party(args.verbose):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars for a sub-second tiny load
    from wuxia_lightning.modeling.export import export_model

    started = time.perf_counter()
    try:
        check_format_options(args)
        if args.fmt == "gguf":
            return finish(export_gguf_from(args), started)
        result = export_model(Path(args.model), Path(args.out), fmt=args.fmt, dtype=args.dtype,
                              style_scale=args.style_scale, instruct_scale=args.instruct_scale,
                              pad_for=args.pad_rank_for, base=args.base, overwrite=args.overwrite)
    except UserInputError as error:
        return report_user_error(error)
    return finish(result, started)


def check_format_options(args: argparse.Namespace) -> None:
    gguf_only = [name for name in ("gguf_type", "converter") if getattr(args, name) is not None]
    if args.fmt != "gguf" and gguf_only:
        raise UserInputError("applies to --format gguf only", field=gguf_only[0].replace("_", "-"))
    if args.fmt == "gguf" and (args.overwrite or args.pad_rank_for):
        raise UserInputError("does not apply to --format gguf (a GGUF export never overwrites)",
                             field="overwrite" if args.overwrite else "pad-rank-for")


def export_gguf_from(args: argparse.Namespace):
    from wuxia_lightning.modeling.gguf_export import export_gguf

    return export_gguf(Path(args.model), Path(args.out), gguf_type=args.gguf_type or "f16", converter=args.converter,
                       style_scale=args.style_scale, instruct_scale=args.instruct_scale, base=args.base)


def finish(result, started: float) -> int:
    print(summary(result.out, result.info, time.perf_counter() - started))
    return 0


def summary(out: Path, info: dict, seconds: float) -> str:
    adapters = ", ".join(f"{a['name']}×{a['scale']:g}" for a in info["adapters"])
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) / 2**20
    if info["format"] == "gguf":
        what = f"GGUF {info['gguf_type']} ({info['chat_format']} turns): {info['base_model']} + {adapters}"
        use = (f"llama-server -m {out / info['file']}, or cd {out} && ollama create wuxia -f Modelfile")
    elif info["format"] == "adapter":
        what = f"LoRA adapter (rank {info['exported_rank']}, lora_alpha {info['exported_rank']}) of {adapters}"
        use = f"serve it on the base model {info['base_model']}"
    else:
        what = f"merged {info['dtype']} model: {info['base_model']} + {adapters}"
        use = "load it with AutoModelForCausalLM.from_pretrained"
    return f"{what}\nwritten to {out} ({size:.1f} MiB, {seconds:.1f} s); {use}"


if __name__ == "__main__":
    sys.exit(main())
