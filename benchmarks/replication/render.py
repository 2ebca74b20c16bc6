"""Tables, plots and findings of a replication run: OUT/README.md plus three PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from wuxia_lightning.report.fonts import find_cjk_font, font_covers  # noqa: E402

PLOTS = ("beta_tradeoff.png", "stage2_variants.png", "function_words.png")


def _table(rows: list[dict], columns: list[str], first: str) -> list[str]:
    lines = ["| " + " | ".join([first, *columns]) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join([str(row.get(first, "")), *cells]) + " |")
    return lines


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def plot_beta(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 4))
    for row in results["stage1"]:
        axes.scatter(row["general_ppl"], row["style_ppl"])
        axes.annotate(f"β={row['beta']}", (row["general_ppl"], row["style_ppl"]), fontsize="small")
    base = results["base"]
    axes.scatter(base["general_ppl"], base["style_ppl"], marker="x", color="black")
    axes.annotate("base", (base["general_ppl"], base["style_ppl"]), fontsize="small")
    axes.set_xlabel("general held-out perplexity (forgetting →)")
    axes.set_ylabel("style held-out perplexity (← style learnt)")
    axes.set_title("Stage 1: the β trade-off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_stage2(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 4))
    for row in results["stage2"]:
        point = (row["rouge_l"] or 0.0, row["p_style"] or 0.0)
        axes.scatter(*point, s=30 + 300 * row["stop_rate"], alpha=0.6)
        axes.annotate(row["variant"], point, fontsize="small")
    axes.set_xlabel("character ROUGE-L vs reference answers (follows instructions →)")
    axes.set_ylabel("P(style) of replies")
    axes.set_title("Stage 2 variants (marker size = stop rate)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_function_words(results: dict, path: Path) -> None:
    """Function-word rates per 1,000 characters: style corpus vs base vs styled continuations."""
    rates = results.get("function_word_rates")
    figure, axes = plt.subplots(figsize=(7, 4))
    font = find_cjk_font()
    if rates:
        names = rates["names"]
        width = 0.27
        for offset, key in enumerate(("corpus", "base", "styled")):
            axes.bar([i + (offset - 1) * width for i in range(len(names))], rates[key], width, label=key)
        label_font = {"fontproperties": FontProperties(fname=font.path)} if font else {}
        labels = [name if font and font_covers(font.path, name) else f"#{i}" for i, name in enumerate(names)]
        axes.set_xticks(range(len(names)), labels, **label_font)
        axes.legend()
    axes.set_ylabel("per 1,000 characters")
    axes.set_title("Function words (虚词): corpus vs base vs styled", **(
        {"fontproperties": FontProperties(fname=font.path)} if font else {}))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _budget_line(budget: dict) -> str:
    return (f"stage 1 {budget['stage1_steps']} steps × {budget['stage1_batch']} windows × {budget['length']} tokens "
            f"(lr {budget.get('stage1_lr', 2e-3):g}), stage 2 {budget['stage2_steps']} steps × {budget['stage2_batch']} "
            f"dialogues ≤ {budget.get('stage2_length', budget['length'])} tokens (lr {budget.get('stage2_lr', 2e-3):g}) "
            f"from {budget['instruct_train']:,} conversations; LoRA r 16 on every linear layer; "
            f"{budget['eval_windows']} held-out windows per perplexity, {budget['continuations']} continuations of "
            f"{budget['continuation_tokens']} tokens, {budget['instruct_heldout']} held-out conversations with "
            f"replies of ≤ {budget['reply_tokens']} tokens")


def _monotone(values: list[float], decreasing: bool) -> bool:
    pairs = list(zip(values, values[1:], strict=False))
    return all((a >= b - 1e-9) if decreasing else (a <= b + 1e-9) for a, b in pairs)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ratio(value: float | None, reference: float | None) -> float:
    """value / reference, NaN when either is undefined (a metric stored as null)."""
    if value is None or reference is None or reference == 0:
        return float("nan")
    return value / reference


def stage1_findings(results: dict) -> list[str]:
    base, chosen = results["base"], results["chosen_beta"]
    rows = results["stage1"]
    row = next(r for r in rows if r["beta"] == chosen)
    style_gain = 1 - row["style_ppl"] / base["style_ppl"]
    general_rise = row["general_ppl"] / base["general_ppl"] - 1
    betas = [r["beta"] for r in rows]
    kls, generals, styles = ([r[k] for r in rows] for k in ("kl_general", "general_ppl", "style_ppl"))
    sweep_ok = _monotone(kls, True) and _monotone(generals, True) and _monotone(styles, False)
    lines = [
        f"- Stage 1 at β = {chosen}: style held-out perplexity {base['style_ppl']:.2f} → {row['style_ppl']:.2f} "
        f"({-style_gain:+.0%}; target ≥ 20% lower: {_verdict(style_gain >= 0.2)}), general "
        f"{base['general_ppl']:.2f} → {row['general_ppl']:.2f} ({general_rise:+.0%}; target ≤ +10%: "
        f"{_verdict(general_rise <= 0.10)}).",
        f"- β sweep {betas}: KL to the base on general text {[round(k, 3) for k in kls]}, general perplexity "
        f"{[round(g, 2) for g in generals]}, style perplexity {[round(x, 2) for x in styles]} — "
        f"{'monotone in all three (larger β: smaller KL, less forgetting, smaller style gain)' if sweep_ok else 'NOT monotone in all three'}.",
        f"- P(style) of sampled continuations of held-out openings: base {base['p_style']:.2f}, stage 1 "
        f"{row['p_style']:.2f} (the classifier's held-out accuracy on real text: "
        f"{results['classifier']['accuracy']:.3f}).",
    ]
    if len(results["masking"]) >= 2:  # the ablation ran (the tiny base; not the real one, for its budget)
        founding, plain = results["masking"][0], results["masking"][1]
        lines.append(
            f"- Masking at β = {chosen}: style perplexity founding mix {founding['style_ppl']:.2f} vs plain causal "
            f"LM {plain['style_ppl']:.2f}; general {founding['general_ppl']:.2f} vs {plain['general_ppl']:.2f} — "
            f"{'the cloze layout does not earn its cost here' if founding['style_ppl'] >= plain['style_ppl'] else 'the cloze layout helps'}.")
    return lines


def stage2_findings(results: dict) -> list[str]:
    stage1 = next(r for r in results["stage1"] if r["beta"] == results["chosen_beta"])
    bare = next(r for r in results["stage2"] if r["variant"] == "bare_instruct")
    lines = []
    for row in results["stage2"]:
        keep = _ratio(row["p_style"], stage1["p_style"])
        follow = _ratio(row["rouge_l"], bare["rouge_l"]) - 1
        chosen = " (chosen)" if row["variant"] == results["chosen_variant"] else ""
        lines.append(
            f"- `{row['variant']}`{chosen}: stop rate {row['stop_rate']:.2f} ({_verdict(row['stop_rate'] >= 0.95)}), "
            f"P(style) {row['p_style'] or 0:.2f} = {keep:.0%} of stage 1's ({_verdict(keep >= 0.8)}), ROUGE-L "
            f"{row['rouge_l'] or 0:.3f} = {follow:+.0%} vs bare-base instruct ({_verdict(abs(follow) <= 0.1 or follow > 0)}), "
            f"style perplexity {row['style_ppl']:.2f}.")
    return lines


def caveats(results: dict) -> list[str]:
    """What the numbers can and cannot say, decided from the numbers themselves."""
    lines = []
    replies_diversity = max((r["distinct_2"] or 0.0) for r in results["stage2"])
    if replies_diversity < 0.1:
        lines.append(
            f"- Stage-2 replies are degenerate in every variant (distinct-2 ≤ {replies_diversity:.3f}: repetition "
            "loops). At this scale the base cannot follow instructions, so stop rate, ROUGE-L and P(style) of "
            "replies compare loops, not answers; the style held-out perplexity of each variant (does the stacked "
            "model still write the novels?) remains a sound comparison.")
    best_stop = max(r["stop_rate"] for r in results["stage2"])
    if best_stop < 0.5:
        lines.append(
            f"- No stage-2 variant learnt to stop within this budget (best stop rate {best_stop:.2f}): replies run to "
            "the token limit, often ending in a repeated phrase, so P(style), ROUGE-L and distinct-2 compare "
            "replies cut at the same length; the limit is the budget or the base (a turn-end token it never trained: stage 2 warns), not the variants. The style "
            "held-out perplexity of each variant remains a sound comparison.")
    stage1 = next(r for r in results["stage1"] if r["beta"] == results["chosen_beta"])
    rows = {r["variant"]: r for r in results["stage2"]}
    kept = sorted(rows.values(), key=lambda r: r["style_ppl"])
    lines.append("- Style held-out perplexity after stage 2, relative to stage 1's "
                 f"{stage1['style_ppl']:.0f}: " + ", ".join(
                     f"`{r['variant']}` {r['style_ppl'] / stage1['style_ppl'] - 1:+.0%}" for r in kept) + ".")
    return lines


def base_description(base_model: dict) -> str:
    if base_model.get("source"):  # a base someone else pre-trained, from a GGUF file
        source = base_model["source"]
        return (f"`{base_model['name']}` ({base_model['architecture']}, {base_model['layers']} layers, hidden "
                f"{base_model['hidden']}, vocabulary {base_model['vocab']:,} with the added infill tokens), "
                f"pre-trained by its authors; from `{source['name']}` (sha256 `{source['sha256']}`), "
                "dequantised once to fp32 and trained in fp32. No pre-training here.")
    return (f"Qwen2, {base_model['parameters']:,} weights, character vocabulary of {base_model['vocab']:,}; "
            f"{base_model['steps']} steps of plain causal LM on general modern Chinese only "
            f"({base_model['tokens_seen']:,} tokens), final loss {base_model['final_loss']:.3f}.")


def sample_sections(results: dict) -> list[str]:
    """Continuations per β and replies per stage-2 variant (with the bare base's replies to the same
    prompts), as many as the budget keeps."""
    lines = ["## Samples", "", "Continuations of held-out chapter openings (sampled, T = 0.8):", ""]
    prompts = results["base"].get("sample_prompts") or []
    for i, prompt in enumerate(prompts):
        lines.append(f"{i + 1}. `{prompt}` → base: {_one_line(results['base']['samples'][i])}")
        for row in results["stage1"]:
            if i < len(row.get("samples", [])):
                lines.append(f"   - β={row['beta']}: {_one_line(row['samples'][i])}")
    if not prompts:  # an older results.json: one sample per β
        lines += [f"- β={r['beta']}: {_one_line(s)}" for r in results["stage1"] for s in r.get("samples", [])[:1]]
    lines += ["", "Replies to held-out instructions (greedy; wuxia system prompt):", ""]
    rows = ([{"variant": "base (no adapters)", **results["base_replies"]}] if results.get("base_replies") else []) \
        + results["stage2"]
    for i, sample in enumerate(rows[0].get("samples", [])):
        lines.append(f"{i + 1}. **{_one_line(sample['prompt'])}**")
        for row in rows:
            if i < len(row.get("samples", [])):
                lines.append(f"   - `{row['variant']}`: {_one_line(row['samples'][i]['reply'])}")
    return lines


def scorecard_section(results: dict, out: Path) -> list[str]:
    """The stage-2 replies scored like any generations (scripts/score_style.py), with the judge's record;
    empty for a results.json written before the scorecard existed."""
    card = results.get("scorecard")
    if not card:
        return []
    from wuxia_lightning.scorecard.output import (
        ATTRIBUTION_PNG,
        CONFUSION_PNG,
        classifier_lines,
        plot_attribution,
        plot_confusion,
        variant_lines,
    )

    plot_confusion(card, out / CONFUSION_PNG)
    plot_attribution(card, out / ATTRIBUTION_PNG)
    n = {name: row["n"] for name, row in card["variants"].items()}
    return ["## Style scorecard of the stage-2 replies", "",
            f"The stored replies ({', '.join(f'{k} {v}' for k, v in n.items())}) scored by the author classifier "
            "and Burrows's Delta of `scripts/score_style.py`, both fitted on the training chapters only. Stop "
            "rates are the run's own (every held-out reply); no target author, so no target rate; the "
            "cross-entropy column needs the trained folders (`--model`).", "",
            "The judge on real held-out chapters:", "", *classifier_lines(card), "",
            f"![confusion matrix]({CONFUSION_PNG})", "", *variant_lines(card), "", *_scorecard_reading(card),
            f"![attribution]({ATTRIBUTION_PNG})", ""]


def _scorecard_reading(card: dict) -> list[str]:
    """One sentence when both judges agree that no variant writes like any novelist."""
    rows = card["variants"].values()
    if all(r["attribution"].get("general", 0) == 1 and r["delta_nearest"] == "general" for r in rows):
        return ["Both judges read every reply of every variant, the base's included, as modern general text: "
                "none reads like any of the novelists, so the stage-2 variants cannot be told apart by author "
                "here (compare distinct-2 and the repetition rate instead).", ""]
    return []


def _one_line(text: str, limit: int = 220) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit] + "…"


def render(results: dict, out: Path) -> None:
    plot_beta(results, out / PLOTS[0])
    plot_stage2(results, out / PLOTS[1])
    plot_function_words(results, out / PLOTS[2])
    base_model = results["base_model"]
    lines = [
        "# Replication in miniature" if not results["base_model"].get("source")
        else f"# Replication on a real base: {results['base_model']['name']}", "",
        f"Command: `{results['command']}`  ",
        f"Wall time: {results['wall_s']:.0f} s this invocation; {results['wall_s_all_steps']:.0f} s summed over "
        f"all steps (base model {base_model['seconds']:.0f} s).  ",
        f"Machine: {results['machine']}", "",
        *(["**Smoke run (`--smoke`): tiny budgets that check the pipeline; these numbers say nothing about "
           "the method.**", ""] if results.get("smoke") else []),
        "## Findings", "", *stage1_findings(results), "",
        "Stage 2 against the targets (stop rate ≥ 0.95; P(style) of replies ≥ 80% of stage 1's continuations; "
        "ROUGE-L within 10% of the instruct adapter trained on the bare base):", "", *stage2_findings(results), "",
        "Reading these numbers:", "", *caveats(results), "",
        "## Base model", "", base_description(base_model), "",
        f"Budget: {_budget_line(results['budget'])}.", "",
        "## Style classifier", "",
        f"Held-out accuracy on real text: {results['classifier']['accuracy']:.3f} "
        f"(n_train {results['classifier'].get('n_train')}, n_test {results['classifier'].get('n_test')}).", "",
        "## Stage 1: β sweep (founding masking mix, same budget)", "",
        *_table([{"beta": "base", **results["base"]}, *results["stage1"]],
                ["style_ppl", "general_ppl", "kl_general", "p_style", "fw_js", "distinct_2"], "beta"), "",
        f"Chosen β = {results['chosen_beta']}.", "", f"![β trade-off]({PLOTS[0]})", "",
        *(["## Masking ablation at the chosen β", "",
           *_table(results["masking"], ["style_ppl", "general_ppl", "p_style", "fw_js"], "mix"), ""]
          if len(results["masking"]) >= 2 else []),
        "## Stage 2 variants (same data and budget)", "",
        *_table(results["stage2"], ["stop_rate", "continues_dialogue_rate", "p_style", "fw_js", "distinct_2",
                                    "rouge_l", "style_ppl"], "variant"), "",
        f"Chosen variant: `{results['chosen_variant']}`.", "", f"![stage 2]({PLOTS[1]})", "",
        f"![function words]({PLOTS[2]})", "",
        *scorecard_section(results, out),
        *sample_sections(results),
    ]
    (out / "README.md").write_text("\n".join(lines).replace("\n\n\n", "\n\n") + "\n", encoding="utf-8")
