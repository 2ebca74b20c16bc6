"""One style adapter per author on the same base and budget: does each write like its own author?

    python benchmarks/replication/authors.py --out /work/runs/authors [--base gemma3-270m] [--smoke]
        [--authors shi_yukun shi_naian] [--publish docs/replication/gemma3-270m/authors]

Steps (each cached under OUT/steps as JSON, so a killed run resumes where it stopped):
  1. the replication's splits and base (run.py); per author, the held-out chapters of its own novels (the
     same per-chapter hash split stage 1 makes, so no opening was trained on by any adapter);
  2. stage 1 (run.py's ``train_style``, the profile's budget, β = 1, the founding masking mix) on each
     author's novels alone and on the whole style corpus (``mixed``);
  3. sampled continuations (run.py's ``continue_texts``) of held-out chapter openings of every author and
     of neutral modern-Chinese story starters, by the base and by each adapter;
  4. the style scorecard (``score_generations``) over all prompts and per prompt group: the share of each
     adapter's continuations the author classifier attributes to its own author, and Burrows's Delta;
  5. OUT/results.json and OUT/README.md (``--publish`` copies both).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
from data_splits import Splits, build_splits  # noqa: E402

from wuxia_lightning.io import strict_json  # noqa: E402

MIXED, BASE, NEUTRAL = "mixed", "base", "neutral"
BETA = 1.0  # the replication's chosen β on this base (docs/replication/gemma3-270m/README.md)
FOUNDING = run.MASKING_MIXES["founding 0.6/0.3/0.1"]
TARGET_RATE = 0.70  # the bar for a single-author adapter's own-author attribution
# Plain modern-Chinese story starters: no wuxia vocabulary, so whatever voice follows is the adapter's.
NEUTRAL_PROMPTS = (
    "那天下午，我在公司楼下等公交车，忽然",
    "小王大学毕业以后，回到了家乡的小城，",
    "周末的早上，妈妈把我叫醒，说",
    "地铁里人很多，她站在门边看着手机，",
    "这家咖啡店开在学校对面，老板是个",
    "下雨了，我撑着伞走进小区，看见",
)


@dataclass(frozen=True)
class Prompting:
    """How many prompts of each group, how long each continuation, how many shown side by side."""

    openings: int = 10       # held-out chapter openings per author
    neutral: int = 5         # neutral starters (at most len(NEUTRAL_PROMPTS))
    new_tokens: int = 96
    shown: int = 10


SMOKE_PROMPTING = Prompting(openings=2, neutral=2, new_tokens=12, shown=3)


# ---------------------------------------------------------------------------------------------- prompts
def author_files(style_train: list[str], author: str) -> list[str]:
    from wuxia_lightning.metrics.authorship import author_of

    files = [f for f in style_train if author_of(f) == author]
    if not files:
        raise SystemExit(f"no style file of author {author!r} in the style corpus")
    return files


def heldout_openings(files: list[str], count: int) -> list[dict]:
    """Openings of the author's held-out chapters, each with its chapter (file#index). split_train_val
    draws per chapter (file name, index), so on real novels these chapters are held out of the mixed run
    too; only a corpus too small for the 5% draw (the smoke sample) forces different chapters out, which
    :func:`mixed_trained_on` counts."""
    from wuxia_lightning.data.corpus import read_corpus, split_train_val

    documents, _ = read_corpus(files, to_simplified=True)
    _, heldout = split_train_val(documents, 0.05, seed=0)
    openings = run._openings([d.text for d in heldout], count)
    if not openings:
        raise SystemExit(f"no held-out chapter opening in {files}")
    return [{"prompt": text, "chapter": _chapter(next(d for d in heldout if text in d.text))} for text in openings]


def _chapter(document) -> str:
    return f"{Path(document.source).name}#{document.index}"


def build_prompts(files_by_author: dict[str, list[str]], prompting: Prompting) -> list[dict]:
    """Every prompt with its group (``openings_<author>`` or ``neutral``)."""
    prompts = [{"group": f"openings_{author}", **opening} for author, files in files_by_author.items()
               for opening in heldout_openings(files, prompting.openings)]
    return prompts + [{"group": NEUTRAL, "prompt": text, "chapter": None} for text in NEUTRAL_PROMPTS[:prompting.neutral]]


def mixed_trained_on(style_train: list[str], prompts: list[dict]) -> int:
    """How many openings come from chapters the mixed adapter's split (the whole corpus) trained on."""
    from wuxia_lightning.data.corpus import read_corpus, split_train_val

    documents, _ = read_corpus(style_train, to_simplified=True)
    train, _ = split_train_val(documents, 0.05, seed=0)
    seen = {_chapter(d) for d in train}
    return sum(p["chapter"] in seen for p in prompts)


# ---------------------------------------------------------------------------------------------- models
def train_adapter(splits: Splits, out: Path, budget: run.Budget, name: str, files: list[str]) -> dict:
    started = time.perf_counter()
    folder = run.train_style(replace(splits, style_train=files), out, budget, f"style_{name}", BETA, FOUNDING)
    return {"folder": folder, "files": [Path(f).name for f in files], "steps": budget.stage1_steps,
            "train_seconds": round(time.perf_counter() - started, 1)}


def continue_prompts(out: Path, folder: str | None, prompts: list[dict], new_tokens: int) -> dict:
    """One continuation per prompt; ``folder`` None: the base without any adapter."""
    from wuxia_lightning.modeling.stacking import load_stacked
    from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

    if folder is None:
        model, tokenizer = run._load_base(out), load_saved_tokenizer(str(out / "models" / "base"))
    else:
        model, tokenizer = load_stacked(folder)
    replies = run.continue_texts(model.eval(), tokenizer, [p["prompt"] for p in prompts], new_tokens)
    return {"continuations": [{**p, "reply": r} for p, r in zip(prompts, replies, strict=True)]}


# ---------------------------------------------------------------------------------------------- scoring
def score(continuations: dict[str, list[dict]], targets: dict[str, str | None], style_train: list[str],
          general_train: str) -> dict:
    """The scorecard over all of a model's continuations, and per prompt group (``model | group``)."""
    from wuxia_lightning.metrics.authorship import AuthorshipModel
    from wuxia_lightning.scorecard import score_generations

    judge = AuthorshipModel.load_or_fit(style_train, general_train)

    def records(by_group: bool) -> list[dict]:
        return [{"variant": f"{name} | {c['group']}" if by_group else name, "prompt": c["prompt"],
                 "reply": c["reply"], "target_author": targets[name]}
                for name, rows in continuations.items() for c in rows]

    return {"overall": score_generations(records(False), judge, min_replies=1),
            "by_group": score_generations(records(True), judge, min_replies=1)["variants"]}


def model_row(name: str, card: dict, authors: list[str], target: str | None) -> dict:
    """What results.json reports per model: own-author rate (with its Wilson 95% interval), the share
    attributed to each studied author, Delta, all of it overall and per prompt group."""
    from wuxia_lightning.scorecard.pairwise import preference

    overall = card["overall"]["variants"][name]
    groups = {key.split(" | ", 1)[1]: row for key, row in card["by_group"].items() if key.startswith(f"{name} | ")}

    def summary(row: dict) -> dict:
        own = row["target_rate"]
        hits = round(own * row["n"]) if own is not None else None
        return {"n": row["n"], "own_author_rate": own,
                "own_author_ci95": preference(hits, row["n"] - hits, 0)["ci95"] if own is not None else None,
                "rate_by_author": {a: row["attribution"].get(a, 0.0) for a in authors},
                "attribution": row["attribution"], "delta": row["delta"], "delta_nearest": row["delta_nearest"],
                "distinct_2": row["distinct_2"], "repeat_10gram_rate": row["repeat_10gram_rate"]}

    return {"target_author": target, **summary(overall),
            "met": None if target is None else (overall["target_rate"] >= TARGET_RATE
                                                and overall["delta_nearest"] == target),
            "by_group": {group: summary(row) for group, row in groups.items()}}


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="working folder (resumed if it exists)")
    parser.add_argument("--publish", type=Path, default=None, help="copy README.md and results.json here")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, not the method")
    parser.add_argument("--base", choices=sorted(run.PROFILES), default="gemma3-270m")
    parser.add_argument("--authors", nargs="+", default=["shi_yukun", "shi_naian"],
                        help="author classes (metrics/authorship.py) to train one adapter each for")
    parser.add_argument("--style-train", default=str(run.SHARED / "style"))
    parser.add_argument("--general-train", default=str(run.SHARED / "general"))
    parser.add_argument("--instruct-train", default=str(run.SHARED / "instruct"),
                        help="its turns join the general shards a tiny base is pre-trained on (run.py's splits)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="train and continue only these models (base, mixed or an author), then stop without "
                             "scoring: separate processes can share the work; a later full run reads their steps")
    parser.add_argument("--stage1-steps", type=int, default=None,
                        help="override the profile's stage-1 steps (every adapter gets the same)")
    parser.add_argument("--stage1-lr", type=float, default=None, help="override the profile's stage-1 lr")
    args = parser.parse_args(argv)
    args.style_heldout = args.general_heldout = args.instruct_heldout = None  # run.py's default splits
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    profile = run.PROFILES[args.base]
    budget = fitted_budget(profile.smoke if args.smoke else profile.budget, args.stage1_steps, args.stage1_lr)
    prompting = SMOKE_PROMPTING if args.smoke else Prompting()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = run.Steps(args.out)
    splits = build_splits(args, args.out, 0.05, budget.instruct_train, budget.instruct_heldout)
    base = steps.run("base_model", lambda: run.link_pretrained_base(profile.pretrained, args.out)
                     if profile.pretrained else run.build_base(splits, args.out, budget))
    files = {author: author_files(splits.style_train, author) for author in args.authors}
    prompts = build_prompts(files, prompting)
    wanted = set(args.only or [BASE, *files, MIXED])
    continuations = {BASE: steps.run("continue_base", lambda: continue_prompts(
        args.out, None, prompts, prompting.new_tokens))["continuations"]} if BASE in wanted else {}
    trained = {}
    # Single-author adapters first: they carry the targets if the run is cut short.
    for name, sources in [(n, s) for n, s in [*files.items(), (MIXED, splits.style_train)] if n in wanted]:
        trained[name] = steps.run(f"train_{name}", lambda n=name, s=sources: train_adapter(
            splits, args.out, budget, n, s))
        continuations[name] = steps.run(f"continue_{name}", lambda n=name: continue_prompts(
            args.out, trained[n]["folder"], prompts, prompting.new_tokens))["continuations"]
    if args.only:
        print(f"[authors] done: {sorted(wanted)}; run without --only to score and write the report")
        return {"trained": trained}
    targets = {name: (name if name in files else None) for name in continuations}
    card = steps.run("scorecard", lambda: score(continuations, targets, splits.style_train, args.general_train))
    results = {"command": " ".join(["python benchmarks/replication/authors.py", *(argv or sys.argv[1:])]),
               "smoke": args.smoke, "base_name": args.base, "base_model": base, "beta": BETA,
               "mix": FOUNDING, "budget": asdict(budget), "prompting": asdict(prompting),
               "target_rate": TARGET_RATE, "machine": run._machine(), "authors": args.authors,
               "adapters": {name: {**trained[name], **model_row(name, card, args.authors, targets[name])}
                            for name in trained},
               BASE: model_row(BASE, card, args.authors, None), "classifier": card["overall"]["classifier"],
               "prompts": prompts, "openings_in_mixed_training": mixed_trained_on(splits.style_train, prompts),
               "continuations": continuations}
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write_report(results, args.out)
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for name in ("README.md", "results.json"):
            shutil.copy2(args.out / name, args.publish / name)
    print(f"[authors] wrote {args.out / 'README.md'} and {args.out / 'results.json'} in {results['wall_s']} s")
    return results


def fitted_budget(budget: run.Budget, steps: int | None, lr: float | None) -> run.Budget:
    """The profile's budget, its stage-1 steps and lr overridden when the machine's time asks for it."""
    return replace(budget, stage1_steps=steps or budget.stage1_steps, stage1_lr=lr or budget.stage1_lr)


def write_report(results: dict, out: Path) -> None:
    from authors_render import render

    (out / "results.json").write_text(strict_json(results, indent=2), encoding="utf-8")
    (out / "README.md").write_text(render(results), encoding="utf-8")


if __name__ == "__main__":
    main()
