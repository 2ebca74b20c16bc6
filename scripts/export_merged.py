#!/usr/bin/env python
"""Merge the adapters of a trained folder into the base and save a plain transformers model for serving.

    python scripts/export_merged.py --model outputs/qwen2.5-7b/stacked --out exports/wuxia-7b
    python scripts/export_merged.py --model outputs/quickstart/stacked --out exports/tiny --dtype float32

--model is a stacked stage-2 folder or a stage-1 adapter folder (wuxia_manifest.json). Every adapter
of the folder is merged (they are all active when the model was trained and is served), and OUT holds
a model that loads with plain ``AutoModelForCausalLM.from_pretrained(OUT)`` (no peft, no manifest),
its tokenizer with the chat template, and a generation_config.json whose eos_token_id lists both
<|im_end|> and <|endoftext|>, so chat replies stop at the end of the turn.

The base is always loaded un-quantised: merging into 4-bit weights changes the outputs through rounding
(peft issue 2321), so --quantization 4bit is refused. An adapter trained on a 4-bit (QLoRA) base merges
into the full-precision base, as recommended. --dtype is the precision of the merge and of the saved
weights: bfloat16 (default, the hub checkpoint's own precision, half the size) or float32 (exact).

OUT is written atomically (a temporary folder beside it, renamed at the end) and never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wuxia_lightning.errors import UserInputError, report_user_error

QUANTISED_MERGE = ("merging into 4-bit weights changes the model's outputs through rounding (peft issue 2321); "
                   "the export always loads the base un-quantised (drop --quantization, choose --dtype)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stacked stage-2 folder or stage-1 adapter folder")
    parser.add_argument("--out", required=True, help="folder to create for the merged model (must not exist)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="precision of the merge and the saved weights (default: %(default)s)")
    parser.add_argument("--base", default=None, help="base model to load instead of the manifest's one")
    parser.add_argument("--quantization", choices=("none", "4bit"), default="none",
                        help="refused when 4bit: exports are merged into un-quantised weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = export(Path(args.model), Path(args.out), args.dtype, args.base, args.quantization)
    except UserInputError as error:
        return report_user_error(error)
    print(f"merged model written to {out}")
    return 0


def export(folder: Path, out: Path, dtype: str, base: str | None = None, quantization: str = "none") -> Path:
    from wuxia_lightning.modeling.stacking import read_manifest

    if quantization != "none":
        raise UserInputError(QUANTISED_MERGE, field="quantization")
    check_target(out)  # before the (slow) model load
    manifest = read_manifest(folder)
    merged, tokenizer = merge(folder, dtype, base, manifest)
    return save_atomically(merged, tokenizer, out, provenance(folder, manifest, dtype, base))


def check_target(out: Path) -> None:
    if out.exists():
        raise UserInputError("output folder already exists; not overwriting it (choose another --out)",
                             path=str(out))


def merge(folder: Path, dtype: str, base: str | None, manifest: dict):
    """(plain transformers model with every adapter merged in, tokenizer)."""
    from wuxia_lightning.data.chat_encoding import ensure_chat_template
    from wuxia_lightning.modeling.stacking import load_stacked

    try:
        model, tokenizer = load_stacked(folder, model_name_or_path=base, dtype=dtype, quantization="none")
    except OSError as error:  # a missing / unreachable base model is the user's to fix
        name = base or manifest.get("base_model")
        raise UserInputError(f"cannot load the base model {name!r}: {str(error).strip().splitlines()[0]}; "
                             "pass --base with a local copy of it", path=str(folder)) from error
    # Name the adapters explicitly: merging only the "current" one would silently drop the style adapter.
    merged = model.merge_and_unload(safe_merge=True, adapter_names=list(manifest["adapters"]))
    ensure_chat_template(tokenizer)
    return merged, tokenizer


def provenance(folder: Path, manifest: dict, dtype: str, base: str | None) -> dict:
    return {"merged_from": str(folder.resolve()), "adapters": manifest["adapters"],
            "base_model": base or manifest.get("base_model"), "stage": manifest.get("stage"), "dtype": dtype}


def save_atomically(model, tokenizer, out: Path, info: dict) -> Path:
    """Write into a temporary folder beside ``out`` and rename it: a reader never sees half a model."""
    from wuxia_lightning.io import staged_directory
    from wuxia_lightning.modeling.stacking import stop_token_ids

    with staged_directory(out) as staging:  # never replaces an existing OUT
        model.config.use_cache = True  # load_base_model turns it off for training; servers read config.json
        generation = model.generation_config
        generation.eos_token_id = stop_token_ids(tokenizer)
        generation.pad_token_id = tokenizer.pad_token_id
        generation._from_model_config = False  # ours now: generate() must not rebuild it from config.json
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "wuxia_export.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())
