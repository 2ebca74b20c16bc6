"""A blind A/B sheet for a human reader, and the reader's choices read back as a preference rate.

The sheet shows each prompt with the two variants' replies in a seeded random order; which reply came
from which variant lives only in the key file, so the reader cannot know. Judgements are a CSV of
``item,choice`` with choice ``1``, ``2`` or ``tie`` (the template the sheet comes with).
Ties count half to each side, so the preference rate is p = (wins_A + ties / 2) / judged; its 95%
interval is Wilson's, and the odds ratio is p / (1 − p), with 0.5 added to both sides when one is zero.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import atomic_write, strict_json
from wuxia_lightning.scorecard.records import Generation, by_variant

SHEET_MD, SHEET_HTML, KEY, TEMPLATE = ("pairwise_sheet.md", "pairwise_sheet.html", "pairwise_key.json",
                                       "pairwise_judgements.csv")
CHOICES = {"1": 0, "2": 1, "tie": None, "=": None}
Z95 = 1.959963984540054


def pairwise_items(records: Sequence[Generation], a: str, b: str, n: int, seed: int,
                   path: str | None = None) -> list[dict]:
    """Up to ``n`` prompts both variants answered (first reply each), sampled and ordered by ``seed``."""
    groups = by_variant(records)
    for name in (a, b):
        if name not in groups:
            raise UserInputError(f"no variant '{name}' for --pairwise (variants: {', '.join(groups)})", path=path)
    replies_a, replies_b = _first_replies(groups[a]), _first_replies(groups[b])
    common = [(prompt, reply) for prompt, reply in replies_a.items() if prompt in replies_b]
    if not common:
        raise UserInputError(f"variants '{a}' and '{b}' share no prompt", path=path)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(common), min(n, len(common)), replace=False))
    flips = rng.random(len(chosen)) < 0.5
    return [{"item": i + 1, "prompt": common[j][0],
             "first": b if flip else a, "second": a if flip else b,
             "replies": [replies_b[common[j][0]], common[j][1]] if flip else [common[j][1], replies_b[common[j][0]]]}
            for i, (j, flip) in enumerate(zip(chosen, flips, strict=True))]


def _first_replies(group: Sequence[Generation]) -> dict[str, str]:
    replies: dict[str, str] = {}
    for g in group:
        replies.setdefault(g.prompt, g.reply)
    return replies


def write_pairwise(items: list[dict], a: str, b: str, seed: int, out: Path) -> list[Path]:
    """The sheet (Markdown and HTML, no variant names), the key and an empty judgements template."""
    key = {"variants": [a, b], "seed": seed,
           "items": [{k: item[k] for k in ("item", "prompt", "first", "second")} for item in items]}
    md = ["# Which reply reads more like classical wuxia fiction?", "",
          f"Fill in `{TEMPLATE}`: for each item write 1, 2 or tie.", ""]
    for item in items:
        md += [f"## Item {item['item']}", "", f"**Prompt:** {_flat(item['prompt'])}", "",
               f"**Reply 1:** {_flat(item['replies'][0])}", "", f"**Reply 2:** {_flat(item['replies'][1])}", ""]
    rows = "".join(f"<h2>Item {i['item']}</h2><p><b>Prompt:</b> {html.escape(i['prompt'])}</p>"
                   f"<p><b>Reply 1:</b> {html.escape(i['replies'][0])}</p>"
                   f"<p><b>Reply 2:</b> {html.escape(i['replies'][1])}</p>" for i in items)
    page = ('<!doctype html><html lang="zh"><meta charset="utf-8"><title>Blind comparison</title>'
            "<style>p { white-space: pre-wrap; }</style><body>"
            f"<h1>Which reply reads more like classical wuxia fiction?</h1><p>Fill in {TEMPLATE}: for each "
            f"item write 1, 2 or tie.</p>{rows}</body></html>\n")
    template = "item,choice\n" + "".join(f"{i['item']},\n" for i in items)
    files = {SHEET_MD: "\n".join(md), SHEET_HTML: page, KEY: strict_json(key, indent=2) + "\n", TEMPLATE: template}
    for name, text in files.items():
        atomic_write(out / name, lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"))
    return [out / name for name in files]


def _flat(text: str) -> str:
    """One Markdown paragraph: a reply's own blank lines would end the item early."""
    return " ".join(text.split()) or "∅"


def read_key(path: Path) -> dict:
    if not path.is_file():
        raise UserInputError("no pairwise key here (write the sheet first with --pairwise A B)", path=str(path))
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
        return {"variants": key["variants"], "items": {int(i["item"]): i for i in key["items"]}}
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(f"not a pairwise key ({error})", path=str(path)) from error


def read_judgements(path: Path, key: dict) -> dict[str, int]:
    """Wins of each variant and ties; a blank choice is an item not judged (skipped)."""
    if not path.is_file():
        raise UserInputError("no such file", path=str(path))
    a, b = key["variants"]
    counts, seen = {a: 0, b: 0, "ties": 0}, set()
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number == 1 and row and row[0].strip().lower() == "item":
                continue
            cells = [c.strip().lower() for c in row] + ["", ""]
            if not any(cells):
                continue
            item = int(cells[0]) if cells[0].isdigit() else None
            if item not in key["items"] or item in seen:
                raise UserInputError(f"item {cells[0]!r} is not in the key or is judged twice", path=str(path),
                                     line=number)
            if cells[1] == "":
                continue
            if cells[1] not in CHOICES:
                raise UserInputError(f"choice {cells[1]!r} must be 1, 2 or tie", path=str(path), line=number)
            seen.add(item)
            side = CHOICES[cells[1]]
            if side is None:
                counts["ties"] += 1
            else:
                counts[key["items"][item]["first" if side == 0 else "second"]] += 1
    if not seen:
        raise UserInputError("no item judged (write 1, 2 or tie in the choice column)", path=str(path))
    return counts


def preference(wins_a: int, wins_b: int, ties: int) -> dict:
    """Preference rate for A with ties halved, its Wilson 95% interval, and the odds ratio p / (1 − p)."""
    n = wins_a + wins_b + ties
    p = (wins_a + ties / 2) / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    for_a, for_b = wins_a + ties / 2, wins_b + ties / 2
    if for_a == 0 or for_b == 0:  # Haldane–Anscombe: a finite ratio when one side never won
        for_a, for_b = for_a + 0.5, for_b + 0.5
    return {"n": n, "wins_a": wins_a, "wins_b": wins_b, "ties": ties, "preference_a": p,
            "ci95": [low, high], "odds_ratio": for_a / for_b,
            "odds_ratio_ci95": [_odds(low), _odds(high)],
            "ties_rule": "a tie counts half to each side; 0.5 added to both sides when one is zero"}


def _odds(p: float) -> float | None:
    return None if p >= 1 else p / (1 - p)
