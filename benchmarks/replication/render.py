"""Tables, plots and findings of a replication run: OUT/README.md plus three PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from wuxia_lightning.report import find_cjk_font  # noqa: E402

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
        axes.scatter(row["rouge_l"], row["p_style"], s=30 + 300 * row["stop_rate"], alpha=0.6)
        axes.annotate(row["variant"], (row["rouge_l"], row["p_style"]), fontsize="small")
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
        axes.set_xticks(range(len(names)), names if font else [f"#{i}" for i in range(len(names))], **label_font)
        axes.legend()
    axes.set_ylabel("per 1,000 characters")
    axes.set_title("Function words (虚词): corpus vs base vs styled", **(
        {"fontproperties": FontProperties(fname=font.path)} if font else {}))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def findings(results: dict) -> list[str]:
    base, chosen = results["base"], results["chosen_beta"]
    row = next(r for r in results["stage1"] if r["beta"] == chosen)
    style_gain = 1 - row["style_ppl"] / base["style_ppl"]
    general_rise = row["general_ppl"] / base["general_ppl"] - 1
    kls = [r["kl_general"] for r in results["stage1"]]
    monotone = all(a >= b - 1e-9 for a, b in zip(kls, kls[1:], strict=False))
    chosen_variant = next(r for r in results["stage2"] if r["variant"] == results["chosen_variant"])
    bare = next(r for r in results["stage2"] if r["variant"] == "bare_instruct")
    lines = [
        f"- Stage 1 at β = {chosen}: style held-out perplexity {base['style_ppl']:.1f} → {row['style_ppl']:.1f} "
        f"({style_gain:+.0%}; target ≥ 20% lower: {'met' if style_gain >= 0.2 else 'NOT met'}), general "
        f"{base['general_ppl']:.1f} → {row['general_ppl']:.1f} ({general_rise:+.0%}; target ≤ +10%: "
        f"{'met' if general_rise <= 0.10 else 'NOT met'}).",
        f"- KL to the base on general text over β {[r['beta'] for r in results['stage1']]}: "
        f"{[round(k, 4) for k in kls]} — {'monotone (larger β, smaller KL)' if monotone else 'NOT monotone'}.",
        f"- P(style) of continuations: base {base['p_style']:.2f}, stage 1 {row['p_style']:.2f} "
        f"(classifier held-out accuracy {results['classifier']['accuracy']:.3f} on real text).",
        f"- Stage 2 chosen variant `{results['chosen_variant']}`: stop rate {chosen_variant['stop_rate']:.2f} "
        f"(target ≥ 0.95), P(style) {chosen_variant['p_style']:.2f} = "
        f"{chosen_variant['p_style'] / max(row['p_style'], 1e-9):.0%} of stage 1's (target ≥ 80%), ROUGE-L "
        f"{chosen_variant['rouge_l']:.3f} vs bare-base {bare['rouge_l']:.3f} "
        f"({chosen_variant['rouge_l'] / max(bare['rouge_l'], 1e-9) - 1:+.0%}; target within 10%).",
    ]
    return lines


def render(results: dict, out: Path) -> None:
    plot_beta(results, out / PLOTS[0])
    plot_stage2(results, out / PLOTS[1])
    plot_function_words(results, out / PLOTS[2])
    base_model = results["base_model"]
    lines = [
        "# Replication in miniature", "",
        f"Command: `{results['command']}`  ",
        f"Wall time: {results['wall_s']:.0f} s this invocation; {results['wall_s_all_steps']:.0f} s summed over "
        f"all steps (base model {base_model['seconds']:.0f} s).  ",
        f"Machine: {results['machine']}", "",
        "## Findings", "", *findings(results), "",
        "## Base model", "",
        f"Qwen2, {base_model['parameters']:,} weights, character vocabulary of {base_model['vocab']:,}; "
        f"{base_model['steps']} steps of plain causal LM on general modern Chinese only "
        f"({base_model['tokens_seen']:,} tokens), final loss {base_model['final_loss']:.3f}.", "",
        "## Style classifier", "",
        f"Held-out accuracy on real text: {results['classifier']['accuracy']:.3f} "
        f"(n_train {results['classifier'].get('n_train')}, n_test {results['classifier'].get('n_test')}).", "",
        "## Stage 1: β sweep (founding masking mix, same budget)", "",
        *_table([{"beta": "base", **results["base"]}, *results["stage1"]],
                ["style_ppl", "general_ppl", "kl_general", "p_style", "fw_js", "distinct_2"], "beta"), "",
        f"Chosen β = {results['chosen_beta']}.", "", f"![β trade-off]({PLOTS[0]})", "",
        "## Masking ablation at the chosen β", "",
        *_table(results["masking"], ["style_ppl", "general_ppl", "p_style", "fw_js"], "mix"), "",
        "## Stage 2, four ways (same data and budget)", "",
        *_table(results["stage2"], ["stop_rate", "continues_dialogue_rate", "p_style", "fw_js", "distinct_2",
                                    "rouge_l", "style_ppl"], "variant"), "",
        f"Chosen variant: `{results['chosen_variant']}`.", "", f"![stage 2]({PLOTS[1]})", "",
        f"![function words]({PLOTS[2]})", "",
        "## Samples", "",
        *[f"- β={r['beta']}: {s}" for r in results["stage1"] for s in r.get("samples", [])[:1]],
        *[f"- {r['variant']}: {s['prompt'][:40]} → {s['reply'][:120]}" for r in results["stage2"]
          for s in r.get("samples", [])[:1]],
    ]
    (out / "README.md").write_text("\n".join(lines).replace("\n\n\n", "\n\n") + "\n", encoding="utf-8")
