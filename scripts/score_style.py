#!/usr/bin/env python
"""The style scorecard of generations: who the replies read like, and how they read.

    python scripts/score_style.py GENERATIONS.jsonl --out DIR [--model TRAINED_DIR] [--overwrite]
    python scripts/score_style.py GENERATIONS.jsonl --out DIR --pairwise A B [--n 20] [--seed 0]
    python scripts/score_style.py --judgements FILLED.csv --out DIR

GENERATIONS: the predictions.jsonl of `wuxia predict`, or any JSONL with "prompt" and "reply" (optional
"variant", "target_author", "stopped"). Writes DIR/scorecard.json, scorecard.md and two PNGs and prints
the table. The author classifier and Burrows's Delta are fitted on the training chapters of the style
corpus (plus general text) once, then cached under the project's cache root. --model adds the author-LM
cross-entropy (per character, the folder's style adapter minus the base). --pairwise A B also writes a
blind sheet (Markdown, HTML), its key and a judgements template; --judgements reads the filled template
back against DIR/pairwise_key.json and prints the preference rate, its Wilson 95% interval and the odds ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    from wuxia_lightning.metrics.authorship import AuthorshipSettings
    from wuxia_lightning.scorecard import MIN_REPLIES

    defaults = AuthorshipSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generations", nargs="?", type=Path, help="JSONL of generations")
    parser.add_argument("--out", required=True, type=Path, help="folder for the scorecard (and the pairwise sheet)")
    parser.add_argument("--model", default=None, help="trained output folder: adds the author-LM cross-entropy")
    parser.add_argument("--style-corpus", default=str(SHARED / "style"), help="novels, one or more files per author")
    parser.add_argument("--general-corpus", default=str(SHARED / "general"), help="modern general text")
    parser.add_argument("--passage-length", type=int, default=defaults.passage_length)
    parser.add_argument("--passages", type=int, default=defaults.max_passages, help="training passages per class")
    parser.add_argument("--min-replies", type=int, default=MIN_REPLIES, help="replies each variant needs")
    parser.add_argument("--pairwise", nargs=2, metavar=("A", "B"), help="write a blind sheet of A vs B")
    parser.add_argument("--n", type=int, default=20, help="prompts on the pairwise sheet")
    parser.add_argument("--seed", type=int, default=0, help="pairwise sampling and order")
    parser.add_argument("--judgements", type=Path, default=None, help="a filled judgements CSV to read back")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scorecard in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wuxia_lightning.console import quiet_third_party
    from wuxia_lightning.errors import UserInputError, report_user_error

    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        return judge(args) if args.judgements else score(args)
    except UserInputError as error:
        return report_user_error(error)


def score(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from wuxia_lightning.errors import UserInputError
    from wuxia_lightning.metrics.authorship import AuthorshipModel, AuthorshipSettings, corpus_classes
    from wuxia_lightning.scorecard import read_generations, score_generations
    from wuxia_lightning.scorecard.output import JSON, variant_lines, write_scorecard
    from wuxia_lightning.scorecard.pairwise import pairwise_items, write_pairwise

    if args.generations is None:
        raise UserInputError("give a generations file (JSONL) to score, or --judgements FILE")
    records = read_generations(args.generations, corpus_classes(args.style_corpus), args.min_replies)
    items = pairwise_items(records, *args.pairwise, args.n, args.seed, str(args.generations)) if args.pairwise \
        else None
    if (args.out / JSON).exists() and not args.overwrite:
        raise UserInputError("already has a scorecard; pass --overwrite to replace it", path=str(args.out))
    if args.model:
        from wuxia_lightning.modeling.stacking import read_manifest

        read_manifest(args.model)  # a wrong folder fails now, before minutes of fitting
    settings = replace(AuthorshipSettings(), passage_length=args.passage_length, max_passages=args.passages)
    model = AuthorshipModel.load_or_fit(args.style_corpus, args.general_corpus, settings)
    lm = None
    if args.model:
        from wuxia_lightning.scorecard.author_lm import cross_entropy_vs_base
        from wuxia_lightning.scorecard.records import by_variant

        lm = cross_entropy_vs_base(args.model, {v: [g.reply for g in group]
                                                for v, group in by_variant(records).items()})
    card = score_generations(records, model, lm, args.min_replies)
    written = write_scorecard(card, args.out, str(args.generations), args.model)
    if items is not None:
        written += write_pairwise(items, *args.pairwise, args.seed, args.out)
    print(f"author classifier: held-out accuracy {card['classifier']['heldout_accuracy']:.3f} on "
          f"{card['classifier']['passage_length']}-character passages")
    print("\n".join(variant_lines(card)))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def judge(args: argparse.Namespace) -> int:
    from wuxia_lightning.io import atomic_write, strict_json
    from wuxia_lightning.scorecard.pairwise import KEY, preference, read_judgements, read_key

    key = read_key(args.out / KEY)
    counts = read_judgements(args.judgements, key)
    a, b = key["variants"]
    result = {"variants": [a, b], "judgements": str(args.judgements),
              **preference(counts[a], counts[b], counts["ties"])}
    text = strict_json(result, indent=2) + "\n"
    atomic_write(args.out / "pairwise_result.json", lambda temporary: temporary.write_text(text, encoding="utf-8"))
    low, high = result["ci95"]
    print(f"{a} preferred over {b}: {result['preference_a']:.3f} (95% Wilson interval {low:.3f}–{high:.3f}; "
          f"{counts[a]} wins, {counts[b]} losses, {counts['ties']} ties counted half each); odds ratio "
          f"{result['odds_ratio']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
