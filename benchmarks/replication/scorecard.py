"""The style scorecard of the replication's stage-2 replies (and the base's), and its README section.

    python benchmarks/replication/scorecard.py docs/replication/gemma3-270m [--style-train P] [--general-train P]

run.py calls :func:`score_replication` as a step; this command scores a finished (or published) run's
results.json after the fact: it adds ``scorecard`` to results.json and re-renders README.md and the plots,
which are otherwise unchanged (render is deterministic). The replies are those stored in results.json
(``stage2[i].samples`` and ``base_replies.samples``); the trained folders are not needed, so the
author-LM cross-entropy is left out here (``scripts/score_style.py --model`` computes it from a folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wuxia_lightning.io import atomic_write, strict_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BASE = "base"


def replication_records(results: dict) -> list[dict]:
    """One record per stored reply: each stage-2 variant's samples, then the base's (variant ``base``)."""
    rows = [*results["stage2"], *([{"variant": BASE, **results["base_replies"]}] if results.get("base_replies")
                                  else [])]
    return [{"variant": row["variant"], "prompt": s["prompt"], "reply": s["reply"]}
            for row in rows for s in row.get("samples", [])]


def score_replication(results: dict, style_train: str, general_train: str, model=None) -> dict:
    """The scorecard of the stored replies; stop rates are the run's own, measured on every held-out reply
    (the stored samples do not say whether each reply stopped). ``model``: an AuthorshipModel already
    fitted (tests), else the default one, fitted once and cached."""
    from wuxia_lightning.metrics.authorship import AuthorshipModel
    from wuxia_lightning.scorecard import score_generations

    model = model or AuthorshipModel.load_or_fit(style_train, general_train)
    # Every stored reply is scored, however few the budget kept (a smoke run keeps one or two).
    card = score_generations(replication_records(results), model, min_replies=1)
    stop_rates = {row["variant"]: row["stop_rate"] for row in results["stage2"]}
    if results.get("base_replies"):
        stop_rates[BASE] = results["base_replies"]["stop_rate"]
    for name, row in card["variants"].items():
        row["stop_rate"] = stop_rates.get(name)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a replication output or published folder (results.json)")
    parser.add_argument("--style-train", default=str(SHARED / "style"))
    parser.add_argument("--general-train", default=str(SHARED / "general"))
    args = parser.parse_args(argv)
    path = args.folder / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    results["scorecard"] = score_replication(results, args.style_train, args.general_train)
    text = strict_json(results, indent=2)
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    from render import render

    render(results, args.folder)
    print(f"[scorecard] wrote {path} and {args.folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
