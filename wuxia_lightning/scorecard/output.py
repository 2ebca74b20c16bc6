"""scorecard.json, scorecard.md and the two charts (the judge's confusion matrix, attribution per variant).

The Markdown helpers are shared with the replication's README (benchmarks/replication/render.py), so a
scorecard reads the same wherever it is printed. Chart labels are the ASCII class ids: the bundled CJK
font subset holds only the glyphs the other charts draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wuxia_lightning.io import atomic_write, strict_json

JSON, MARKDOWN, CONFUSION_PNG, ATTRIBUTION_PNG = ("scorecard.json", "scorecard.md", "scorecard_confusion.png",
                                                  "scorecard_attribution.png")
COLUMNS = (("n", "n"), ("target_author", "target"), ("target_rate", "target rate"),
           ("top_attribution", "most replies read as"), ("delta_nearest", "Delta nearest"),
           ("ce_vs_base", "CE vs base (nats/char)"), ("stop_rate", "stop rate"), ("distinct_2", "distinct-2"),
           ("mean_length", "mean length"), ("repeat_10gram_rate", "repeats a 10-gram"))


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def classifier_lines(card: dict) -> list[str]:
    """The judge's record on held-out real chapters: accuracy, confusion matrix, Delta's verdicts."""
    c = card["classifier"]
    classes = c["classes"]
    by_length = ", ".join(f"{n} characters {a:.3f}" for n, a in c["accuracy_by_length"].items())
    delta_right = sum(k == v for k, v in c["delta_nearest_heldout"].items())
    names = ", ".join(f"`{k}` = {c['names'][k]}" for k in classes)
    lines = [f"Classes: {names}.", "",
             f"Held-out accuracy on {c['n_test']} passages of {c['passage_length']} characters from held-out "
             f"chapters (trained on {c['n_train']} passages of training chapters): **{c['heldout_accuracy']:.3f}**"
             f" (by passage length: {by_length}).", "",
             "Confusion matrix (rows: true class, columns: predicted):", "",
             "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {truth} | " + " | ".join(str(n) for n in row) + " |" for truth, row in zip(classes, c["confusion"],
                                                                                        strict=True)]
    lines += ["", f"Burrows's Delta: the pooled held-out text of {delta_right} of {len(classes)} classes is nearest "
              "its own centroid" + ("" if delta_right == len(classes) else " (" + ", ".join(
                  f"{k} → {v}" for k, v in c["delta_nearest_heldout"].items() if k != v) + ")") + "."]
    return lines


def variant_lines(card: dict) -> list[str]:
    """One row per variant, then the attribution shares per class."""
    classes = card["classifier"]["classes"]
    lines = ["| variant | " + " | ".join(label for _, label in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in card["variants"].items():
        top = max(row["attribution"], key=row["attribution"].get) if row["n_scored"] else None
        cells = [_cell(top if key == "top_attribution" else row.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Share of replies attributed to each class:", "",
              "| variant | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row['attribution'][c]:.2f}" for c in classes) + " |"
              for name, row in card["variants"].items()]
    return lines


def markdown(card: dict, source: str, model: str | None) -> str:
    lines = ["# Style scorecard", "", f"Generations: `{source}`. Author LM: "
             + (f"`{model}` (CE = per-character loss under its style adapter minus under the base; negative = "
                "the style model finds the replies more its own)." if model else "not given (`--model`)."), "",
             "## The judge on real held-out chapters", "", *classifier_lines(card), "",
             f"![confusion matrix]({CONFUSION_PNG})", "", "## Variants", "", *variant_lines(card), "",
             f"![attribution]({ATTRIBUTION_PNG})", ""]
    return "\n".join(lines)


def write_scorecard(card: dict, out: Path, source: str, model: str | None) -> list[Path]:
    text, data = markdown(card, source, model), strict_json(card, indent=2) + "\n"
    atomic_write(out / JSON, lambda temporary: temporary.write_text(data, encoding="utf-8"))
    atomic_write(out / MARKDOWN, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    plot_confusion(card, out / CONFUSION_PNG)
    plot_attribution(card, out / ATTRIBUTION_PNG)
    return [out / JSON, out / MARKDOWN, out / CONFUSION_PNG, out / ATTRIBUTION_PNG]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def plot_confusion(card: dict, path: Path) -> None:
    c = card["classifier"]
    counts = np.asarray(c["confusion"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = _figure(6, 5)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        axes.text(j, i, f"{int(n)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ticks = range(len(c["classes"]))
    axes.set_xticks(ticks, c["classes"], rotation=40, ha="right")
    axes.set_yticks(ticks, c["classes"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true (held-out chapters)")
    axes.set_title(f"Author classifier, {c['passage_length']}-character passages: accuracy "
                   f"{c['heldout_accuracy']:.3f}")
    _save(figure, path)


def plot_attribution(card: dict, path: Path) -> None:
    classes, variants = card["classifier"]["classes"], list(card["variants"])
    figure = _figure(7, 1.2 + 0.5 * len(variants))
    axes = figure.add_subplot()
    left = np.zeros(len(variants))
    colours = [f"C{i}" for i in range(len(classes))]
    for label, colour in zip(classes, colours, strict=True):
        shares = np.array([card["variants"][v]["attribution"][label] for v in variants])
        axes.barh(range(len(variants)), shares, left=left, color=colour, label=label)
        left += shares
    axes.set_yticks(range(len(variants)), variants)
    axes.invert_yaxis()  # the table's order, top to bottom
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of replies attributed")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(variants) > 2 else -0.5), ncol=3,
                fontsize="small")
    axes.set_title("Who the replies read like (author classifier)")
    _save(figure, path)
