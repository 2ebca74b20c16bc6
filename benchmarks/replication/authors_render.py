"""README.md of the per-author run (authors.py): the targets, the scorecards and continuations side by side.

Rendering reads results.json only, so a published folder can be re-rendered without the models.
"""

from __future__ import annotations

BASE, NEUTRAL = "base", "neutral"


def render(results: dict) -> str:
    models = {BASE: results[BASE], **results["adapters"]}
    parts = [_header(results), _targets(results), _attribution(results, models), _by_group(results, models),
             _delta(results, models), _judge(results), _side_by_side(results, models)]
    return "\n\n".join(parts) + "\n"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _header(results: dict) -> str:
    budget, prompting = results["budget"], results["prompting"]
    groups = sorted({p["group"] for p in results["prompts"]})
    counts = ", ".join(f"{g} {sum(p['group'] == g for p in results['prompts'])}" for g in groups)
    return "\n".join([
        f"# One style adapter per author: {results['base_name']}" + (" (smoke run)" if results["smoke"] else ""),
        "", f"Command: `{results['command']}`  ",
        f"Wall time: {results['wall_s']} s this invocation; training "
        + ", ".join(f"{n} {a['train_seconds']} s" for n, a in results["adapters"].items()) + " (when trained).  ",
        f"Machine: {results['machine']}", "",
        f"Stage 1, the same budget for every adapter: {budget['stage1_steps']} steps × {budget['stage1_batch']} "
        f"windows × {budget['length']} tokens, lr {budget['stage1_lr']}, β = {results['beta']}, masking mix "
        f"{tuple(results['mix'])}, LoRA r 16 on every linear layer. Adapters: "
        + ", ".join(f"`{n}` ({' + '.join(a['files'])})" for n, a in results["adapters"].items()) + ".",
        "", f"Prompts ({len(results['prompts'])}: {counts}): openings (24 characters) of held-out chapters of "
        "each author's own novels — chapters its adapter never trained on; of these openings, "
        f"{results['openings_in_mixed_training']} come from chapters the mixed adapter trained on — and neutral "
        "modern-Chinese story "
        f"starters. Continuations: sampled (temperature 0.8, top-p 0.95, repetition penalty 1.05, seed 0), "
        f"{prompting['new_tokens']} new tokens, the same prompts and random stream for every model."])


def _targets(results: dict) -> str:
    rows = ["## Targets", "",
            f"Each single-author adapter's continuations attributed to its own author ≥ "
            f"{results['target_rate']:.0%} of the time, over all prompts, and its Delta nearest to its own author. "
            "The base and mixed columns are the share the same prompts' continuations get for that author.", "",
            "| adapter | author | own-author rate (95% CI) | base, same prompts | mixed, same prompts | "
            "per group | Delta nearest | met |", "|---|---|---|---|---|---|---|---|"]
    mixed = results["adapters"].get("mixed")
    for name, row in results["adapters"].items():
        author = row["target_author"]
        if author is None:
            continue
        low, high = row["own_author_ci95"]
        groups = "; ".join(f"{g} {_fmt(r['own_author_rate'])}" for g, r in row["by_group"].items())
        rows.append(f"| `{name}` | {author} | {_fmt(row['own_author_rate'])} ({low:.2f}–{high:.2f}, n {row['n']}) | "
                    f"{_fmt(results[BASE]['rate_by_author'][author])} | "
                    f"{_fmt(mixed['rate_by_author'][author]) if mixed else '—'} | {groups} | "
                    f"{row['delta_nearest']} | {'yes' if row['met'] else 'NO'} |")
    return "\n".join(rows)


def _attribution(results: dict, models: dict) -> str:
    classes = results["classifier"]["classes"]
    rows = ["## Attribution, all prompts", "", "Share of each model's continuations the author classifier "
            "gives to each class.", "", "| model | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    rows += [f"| `{name}` | " + " | ".join(_fmt(row["attribution"][c]) for c in classes) + " |"
             for name, row in models.items()]
    return "\n".join(rows)


def _by_group(results: dict, models: dict) -> str:
    classes = results["classifier"]["classes"]
    rows = ["## Attribution per prompt group", "", "| model | prompts | n | " + " | ".join(classes) + " |",
            "|---|---|---|" + "---|" * len(classes)]
    for name, row in models.items():
        rows += [f"| `{name}` | {group} | {g['n']} | " + " | ".join(_fmt(g["attribution"][c]) for c in classes) + " |"
                 for group, g in row["by_group"].items()]
    return "\n".join(rows)


def _delta(results: dict, models: dict) -> str:
    classes = results["classifier"]["classes"]
    rows = ["## Burrows's Delta", "", "Distance of each model's pooled continuations (all prompts) to each "
            "class's centroid (smaller is nearer); per group, the nearest class.", "",
            "| model | " + " | ".join(classes) + " | nearest | nearest per group |",
            "|---|" + "---|" * (len(classes) + 2)]
    for name, row in models.items():
        groups = "; ".join(f"{g} {r['delta_nearest']}" for g, r in row["by_group"].items())
        rows.append(f"| `{name}` | " + " | ".join(f"{row['delta'][c]:.3f}" for c in classes)
                    + f" | **{row['delta_nearest']}** | {groups} |")
    return "\n".join(rows)


def _judge(results: dict) -> str:
    judge = results["classifier"]
    names = ", ".join(f"`{c}` = {judge['names'][c]}" for c in judge["classes"])
    by_length = ", ".join(f"{k} characters {v:.3f}" for k, v in judge["accuracy_by_length"].items())
    recall = ", ".join(f"{c} {v:.3f}" for c, v in judge["recall"].items())
    return "\n".join(["## The judge", "", f"Classes: {names}.", "",
                      f"The author classifier's held-out accuracy on real text ({judge['n_test']} passages of "
                      f"{judge['passage_length']} characters from held-out chapters): **{judge['heldout_accuracy']:.3f}** "
                      f"({by_length}); recall per class: {recall}. Delta nearest for each class's held-out text: "
                      + ", ".join(f"{c} → {n}" for c, n in judge["delta_nearest_heldout"].items()) + "."])


def _side_by_side(results: dict, models: dict) -> str:
    shown = _shown_indices(results["prompts"], results["prompting"]["shown"])
    names = list(models)
    rows = ["## Continuations side by side", "", f"{len(shown)} of the {len(results['prompts'])} prompts, spread "
            "over the groups; every model's continuation of each (newlines shown as ⏎).", "",
            "| prompt | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for i in shown:
        prompt = results["prompts"][i]
        cells = [_cell(results["continuations"][n][i]["reply"]) for n in names]
        rows.append(f"| ({prompt['group']}) {_cell(prompt['prompt'])} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _shown_indices(prompts: list[dict], count: int) -> list[int]:
    """Round robin over the prompt groups, so every group is shown."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p["group"], []).append(i)
    order = [i for rank in range(max(map(len, groups.values()))) for g in groups.values() if rank < len(g)
             for i in [g[rank]]]
    return sorted(order[:count])


def _cell(text: str) -> str:
    return text.replace("|", "｜").replace("\r", "").replace("\n", "⏎")
