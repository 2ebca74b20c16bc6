"""The base's replies beside the trained model's, for the same prompts: a Markdown table.

    python scripts/compare_replies.py --model outputs/gemma3-270m/stacked --prompts scripts/example_prompts.txt \
        --out outputs/gemma3-270m/base_vs_stacked.md [--max-new-tokens 96] [--overwrite]

The base is the same loaded model with its adapters switched off; the system prompt is the preset the
folder was trained with; decoding is greedy, so a rerun gives the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a stacked output folder (wuxia_manifest.json)")
    parser.add_argument("--prompts", required=True, help="one prompt per line")
    parser.add_argument("--out", required=True, type=Path, help="Markdown file to write")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wuxia_lightning.console import quiet_third_party
    from wuxia_lightning.errors import UserInputError, report_user_error

    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        return run(args)
    except UserInputError as error:
        return report_user_error(error)


def run(args: argparse.Namespace) -> int:
    from wuxia_lightning.data.presets import resolve_system_prompt
    from wuxia_lightning.errors import UserInputError
    from wuxia_lightning.generation import GenerationSettings, replies_with_and_without_adapters
    from wuxia_lightning.io import atomic_write
    from wuxia_lightning.modeling.stacking import load_stacked, read_manifest

    if args.out.exists() and not args.overwrite:
        raise UserInputError("exists; not overwriting it (pass --overwrite)", path=str(args.out))
    prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserInputError("no prompts (one per line)", path=args.prompts)
    manifest = read_manifest(args.model)
    preset = (manifest.get("data") or {}).get("preset")
    system = resolve_system_prompt(preset) if preset else None
    conversations = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                     for p in prompts]
    model, tokenizer = load_stacked(args.model)
    trained, base = replies_with_and_without_adapters(model, tokenizer, conversations,
                                                       GenerationSettings(args.max_new_tokens))
    lines = [f"# Base vs trained: `{manifest['base_model']}` → `{args.model}`", "",
             f"System prompt: preset `{preset}`; greedy decoding, at most {args.max_new_tokens} new tokens; "
             "✓ = the reply ended with the end-of-turn token.", "",
             "| prompt | base (adapters off) | trained |", "|---|---|---|"]
    for prompt, mine, theirs in zip(prompts, trained, base, strict=True):
        lines.append(f"| {_cell(prompt)} | {_cell(theirs.generation)}{' ✓' if theirs.stopped else ''} | "
                     f"{_cell(mine.generation)}{' ✓' if mine.stopped else ''} |")
    lines += ["", f"Stopped: base {sum(r.stopped for r in base)}/{len(base)}, "
                  f"trained {sum(r.stopped for r in trained)}/{len(trained)}."]
    atomic_write(args.out, lambda temporary: temporary.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    print("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "∅"


if __name__ == "__main__":
    sys.exit(main())
