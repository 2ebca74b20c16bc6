"""Turn a run folder into a Markdown report with PNG plots (SPEC §4: what `validate` / `predict` wrote).

Inputs, all but ``metrics.csv`` optional: Lightning's CSVLogger ``metrics.csv`` (sparse rows: each row
holds only the metrics logged at that step), ``hparams.yaml``, ``style_eval.json`` (stage-1 function-word
rates of corpus / base / styled model) and a predict output folder (``predictions.jsonl`` +
``summary.json``). Anything missing becomes "not logged" in the report instead of an error.

Plots are drawn on bare ``Figure`` objects with the Agg canvas, never through pyplot: no display is
needed and no global pyplot state (backend, open figures) leaks into the caller.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager

Metrics = dict[str, list[tuple[int, float]]]

# Curve groups of the report: (file stem, heading, keys, log-scale y). Keys that were not logged are
# skipped, so one table serves stage 1 and stage 2.
LOSS_KEYS = ("train/loss", "train/ce", "train/kl", "val_style/loss", "val/loss")
PPL_KEYS = ("train/ppl", "val_style/ppl", "val_general/ppl", "val/ppl")
KL_KEYS = ("train/kl", "val_style/kl", "val_general/kl")
SHARE_KEYS = ("train/share_span", "train/share_function_word", "train/share_none")
RATE_KEYS = ("val/stop_rate", "val/continues_dialogue_rate")

# Direction of "best" for validation metrics, by the name after the last "/". Unknown names get no best.
LOWER_IS_BETTER = ("loss", "ce", "kl", "ppl", "fw_js", "continues_dialogue_rate")
HIGHER_IS_BETTER_PREFIXES = ("ngram_", "distinct_", "stop_rate")

PREFIX_ORDER = ("train", "val_style", "val_general", "val", "base")
# The jieba POS buckets of the function-word features (wuxia_lightning.metrics.function_words).
POS_NAMES = {"u": "other particles", "p": "other prepositions", "c": "other conjunctions",
             "y": "other modal particles", "e": "other interjections"}
CJK_FONT_NAMES = ("Noto Sans CJK", "Noto Serif CJK", "Source Han", "WenQuanYi", "Droid Sans Fallback",
                  "AR PL", "SimHei", "Microsoft YaHei", "PingFang", "Heiti", "Songti")
CJK_PROBE = "之"  # a glyph every Chinese font has and no Latin font has
PREVIEW_CHARS = 300  # longer texts are cut in the Markdown tables so a row stays readable


# --------------------------------------------------------------------------- reading inputs


def read_metrics(csv_path: str | Path) -> Metrics:
    """``metric -> [(step, value)]`` from a CSVLogger file, skipping blank cells.

    ``epoch`` and ``step`` are bookkeeping columns, not metrics. Unparsable cells are skipped like blanks;
    ``nan``/``inf`` are kept (a diverged run should show as such in the table) and filtered when plotting.
    """
    metrics: Metrics = {}
    with Path(csv_path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = _parse_float(row.get("step"))
            if step is None:
                continue
            for name, cell in row.items():
                value = _parse_float(cell)
                if name in ("epoch", "step") or name is None or value is None:
                    continue
                metrics.setdefault(name, []).append((int(step), value))
    return metrics


def _parse_float(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _read_json(path: Path) -> tuple[object | None, str | None]:
    """(data, problem): a missing or corrupt optional file is reported, never raised."""
    if not path.is_file():
        return None, "not logged"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as error:
        return None, f"unreadable ({type(error).__name__}: {error})"


def _read_hparams(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml  # a Lightning dependency; imported here because only the hparams section needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # e.g. python/object tags that safe_load refuses: the report just omits hparams
    return data if isinstance(data, dict) else None


def _read_predictions(folder: Path) -> tuple[list[dict], str | None]:
    path = folder / "predictions.jsonl"
    if not path.is_file():
        return [], f"no predictions.jsonl in {folder}"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None  # a truncated last line (interrupted predict) should not hide the rest
        if isinstance(row, dict):
            rows.append(row)
    return rows, None


# --------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class CjkFont:
    name: str
    path: Path


def _covers_cjk(path: str | Path) -> bool:
    from matplotlib.ft2font import FT2Font

    try:
        return FT2Font(str(path)).get_char_index(ord(CJK_PROBE)) != 0
    except (OSError, RuntimeError, ValueError):
        return False


def _fc_list_paths() -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    try:
        command = ["fc-list", ":lang=zh", "file"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]


@lru_cache(maxsize=1)
def find_cjk_font() -> CjkFont | None:
    """A font that can draw Chinese labels: known CJK families among matplotlib's fonts first, then
    whatever ``fc-list :lang=zh`` reports (fonts matplotlib's cache may predate). None when there is none;
    the glyph is probed because a name match alone has lied before (e.g. Latin-only subsets)."""
    for entry in fontManager.ttflist:
        if any(name.lower() in entry.name.lower() for name in CJK_FONT_NAMES) and _covers_cjk(entry.fname):
            return CjkFont(entry.name, Path(entry.fname))
    for path in _fc_list_paths():
        if _covers_cjk(path):
            fontManager.addfont(path)
            return CjkFont(FontProperties(fname=path).get_name(), Path(path))
    return None


def feature_label(feature: str, cjk: bool) -> str:
    """Axis label of one function-word feature.

    Without a CJK font, matplotlib draws empty boxes for Chinese (and warns per glyph), so labels become
    code points ("U+4E4B"); the report prints a key mapping them back to the characters.
    """
    if feature.startswith("<pos:") and feature.endswith(">"):
        tag = feature[5:-1]
        return f"{feature} {POS_NAMES[tag]}" if tag in POS_NAMES else feature
    if cjk or feature.isascii():
        return feature
    return " ".join(f"U+{ord(char):04X}" if not char.isascii() else char for char in feature)


# --------------------------------------------------------------------------- plotting


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def ema(values: Sequence[float], span: float | None = None) -> list[float]:
    """Exponential moving average; the span grows with the run length (≈1/10 of the points, 1..50)
    so that short smoke runs are barely smoothed and long runs lose their per-batch noise."""
    if span is None:
        span = min(50.0, max(1.0, len(values) / 10))
    alpha = 2.0 / (span + 1.0)
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else alpha * value + (1 - alpha) * smoothed[-1])
    return smoothed


def _finite(points: Iterable[tuple[int, float]], positive: bool) -> list[tuple[int, float]]:
    return [(s, v) for s, v in points if math.isfinite(v) and (v > 0 or not positive)]


def _draw_series(axes, key: str, points: list[tuple[int, float]], color: str) -> None:
    steps, values = [s for s, _ in points], [v for _, v in points]
    if key.startswith("train/") and len(points) > 1:
        # per-batch values are noisy: faint raw line, the EMA carries the label and the eye
        axes.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        axes.plot(steps, ema(values), color=color, linewidth=2.0, label=f"{key} (EMA)")
    else:
        # validation metrics come once per epoch: few points, each one matters
        axes.plot(steps, values, color=color, linewidth=1.5, marker="o", markersize=5, label=key)


def plot_curves(metrics: Metrics, out_png: str | Path, keys: Sequence[str], title: str, *,
                log_y: bool = False, ylabel: str = "", ylim: tuple[float, float] | None = None,
                ) -> Path | None:
    """Curves of ``keys`` against the global step; None (and no file) when none of them was logged."""
    present = [(k, _finite(metrics[k], positive=log_y)) for k in keys if k in metrics]
    present = [(k, points) for k, points in present if points]
    if not present:
        return None
    figure = _new_figure(8.0, 4.8)
    axes = figure.add_subplot()
    for index, (key, points) in enumerate(present):
        _draw_series(axes, key, points, f"C{index}")
    if log_y:
        axes.set_yscale("log")
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.3)
    # below the axes, not inside: a legend placed "best" still covers curves that span the whole plot
    figure.legend(loc="outside lower center", ncols=min(3, len(present)), fontsize="small", frameon=False)
    return _save(figure, out_png)


def _top_features(style_eval: dict, top_k: int) -> list[int]:
    """Indices of the ``top_k`` features with the highest corpus rate (ties keep vocabulary order)."""
    corpus = style_eval["rates"]["corpus"]
    return sorted(range(len(corpus)), key=lambda i: -corpus[i])[:top_k]


FW_SERIES = (("corpus", "corpus", "C7"), ("base", "base model", "C0"), ("styled", "styled model", "C3"))


def _draw_rate_bars(axes, style_eval: dict, chosen: Sequence[int], font: CjkFont | None) -> None:
    rates, js = style_eval["rates"], style_eval.get("js_divergence") or {}
    height = 0.8 / len(FW_SERIES)
    for offset, (key, label, color) in enumerate(FW_SERIES):
        if key in rates:
            label = f"{label} (JS {js[key]:.3f})" if key in js else label
            y = [row + (offset - 1) * height for row in range(len(chosen))]
            axes.barh(y, [rates[key][i] for i in chosen], height=height, color=color, label=label)
    labels = [feature_label(style_eval["feature_names"][i], font is not None) for i in chosen]
    label_font = {"fontproperties": FontProperties(fname=font.path)} if font else {}
    axes.set_yticks(range(len(chosen)), labels, **label_font)
    axes.set_ylim(len(chosen) - 0.5, -0.5)  # the most frequent corpus feature on top, no empty margins
    axes.grid(True, axis="x", alpha=0.3)


def plot_function_words(style_eval: dict, out_png: str | Path, top_k: int = 20) -> Path:
    """Grouped horizontal bars of function-word rates (per 1,000 characters): corpus, base, styled.

    Horizontal so that labels read left to right whatever their length. The jieba POS buckets ("all
    other particles", …) are 10-50x more frequent than any single word, so they get their own panel
    with its own scale; on a shared axis the individual words would shrink to slivers."""
    chosen = _top_features(style_eval, top_k)
    names = style_eval["feature_names"]
    groups = [g for g in ([i for i in chosen if not names[i].startswith("<pos:")],
                          [i for i in chosen if names[i].startswith("<pos:")]) if g]
    font = find_cjk_font()
    figure = _new_figure(8.5, 1.8 + 0.42 * len(chosen))
    grid = figure.add_gridspec(len(groups), 1, height_ratios=[len(g) for g in groups])
    for row, group in enumerate(groups):
        axes = figure.add_subplot(grid[row])
        _draw_rate_bars(axes, style_eval, group, font)
        pos = names[group[0]].startswith("<pos:")
        kind = "jieba POS buckets (all other words of the class)" if pos else "single function words"
        axes.set_title(kind, fontsize="medium", loc="left")
    axes.set_xlabel("occurrences per 1,000 characters")
    figure.suptitle(f"Function-word rates, top {len(chosen)} features by corpus rate")
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=3,
                  fontsize="small", frameon=False)
    return _save(figure, out_png)


# --------------------------------------------------------------------------- Markdown helpers


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return _cell(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _cell(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Text made safe for one Markdown table cell: HTML-escaped (so ``<|im_end|>`` stays visible),
    ``|`` escaped, newlines as <br>, cut at ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _best_direction(metric: str) -> str | None:
    leaf = metric.rsplit("/", 1)[-1]
    if leaf in LOWER_IS_BETTER:
        return "min"
    if leaf.startswith(HIGHER_IS_BETTER_PREFIXES):
        return "max"
    return None


def best_value(metric: str, points: Sequence[tuple[int, float]]) -> tuple[int, float] | None:
    """Best (step, value) of a validation metric; None for training/base metrics or unknown direction."""
    direction = _best_direction(metric)
    finite = _finite(points, positive=False)
    if not metric.startswith("val") or direction is None or not finite:
        return None
    pick = min if direction == "min" else max
    return pick(finite, key=lambda point: point[1])


def _metric_order(name: str) -> tuple[int, str]:
    prefix = name.split("/", 1)[0]
    return (PREFIX_ORDER.index(prefix) if prefix in PREFIX_ORDER else len(PREFIX_ORDER), name)


def final_values_table(metrics: Metrics) -> list[str]:
    rows = []
    for name in sorted(metrics, key=_metric_order):
        step, value = metrics[name][-1]
        best = best_value(name, metrics[name])
        best_cells = [_fmt(best[1]), str(best[0])] if best else ["—", "—"]
        rows.append([f"`{name}`", _fmt(value), str(step), *best_cells])
    return _table(["metric", "last", "at step", "best", "at step"], rows)


# --------------------------------------------------------------------------- report sections


@dataclass
class Context:
    log_dir: Path
    out_dir: Path
    metrics: Metrics
    stage: int | None


def detect_stage(metrics: Metrics) -> int | None:
    """1 = style adapter (KL / val_style metrics), 2 = instruct adapter (val/ metrics), None = unclear."""
    stages = {_stage_of_key(k) for k in metrics} - {None}
    return stages.pop() if len(stages) == 1 else None


def _header(ctx: Context, hparams: dict | None) -> list[str]:
    folder = ctx.log_dir.resolve()
    run = f"{folder.parent.name}/{folder.name}"  # e.g. quickstart_style/version_3
    stage = {1: "stage 1 (style adapter)", 2: "stage 2 (instruct adapter)"}.get(ctx.stage, "stage unknown")
    last = max((s for points in ctx.metrics.values() for s, _ in points), default=None)
    lines = [f"# Training report: {run}", "",
             f"- log folder: `{ctx.log_dir}`", f"- {stage}; last logged step: {last}"]
    if hparams:
        for key in ("model_name_or_path", "learning_rate", "kl_beta", "lora_r", "batch_size", "max_length"):
            if key in hparams:
                lines.append(f"- {key}: `{hparams[key]}`")
    else:
        lines.append("- hparams.yaml: not logged")
    return lines + [""]


def _hparams_section(hparams: dict | None) -> list[str]:
    if not hparams:
        return []
    rows = [[f"`{k}`", _fmt(v)] for k, v in hparams.items() if not str(k).startswith("_")]
    return ["<details><summary>All hyperparameters (hparams.yaml)</summary>", "",
            *_table(["name", "value"], rows), "", "</details>", ""]


def _stage_of_key(key: str) -> int | None:
    if key.startswith("val/"):
        return 2
    if key.startswith(("val_style/", "val_general/", "base/", "train/ce", "train/kl", "train/share_")):
        return 1
    return None


def _curve_section(ctx: Context, stem: str, heading: str, keys: Sequence[str], *, log_y: bool = False,
                   ylabel: str = "", note: str = "", ylim: tuple[float, float] | None = None) -> list[str]:
    lines = [f"## {heading}", ""]
    # a stage-1 run never logs val/loss (and vice versa): listing the other stage's keys is noise
    keys = [k for k in keys if ctx.stage is None or _stage_of_key(k) in (None, ctx.stage)]
    png = plot_curves(ctx.metrics, ctx.out_dir / f"{stem}.png", keys, heading, log_y=log_y, ylabel=ylabel,
                      ylim=ylim)
    if png is None:
        return lines + [f"not logged (none of {', '.join(f'`{k}`' for k in keys)})", ""]
    missing = [k for k in keys if k not in ctx.metrics]
    lines += [f"![{stem}]({png.name})", ""]
    if note:
        lines += [note, ""]
    if missing:
        lines += ["not logged: " + ", ".join(f"`{k}`" for k in missing), ""]
    return lines


def _font_note(chosen: Sequence[str]) -> list[str]:
    font = find_cjk_font()
    if font is not None:
        return [f"Chart font for Chinese labels: {font.name} (`{font.path}`).", ""]
    key = " · ".join(f"{feature_label(f, False)} = {f}" for f in chosen if not f.isascii())
    return ["No CJK font found (matplotlib fonts, `fc-list :lang=zh`), so the chart labels Chinese "
            "function words by code point; install e.g. `fonts-noto-cjk` to see the characters.",
            "", f"Key: {key}" if key else "", ""]


def _js_table(style_eval: dict) -> list[str]:
    js = style_eval.get("js_divergence") or {}
    if not js:
        return ["JS divergence: not logged", ""]
    rows = [[model, _fmt(float(js[model]))] for model in ("base", "styled") if model in js]
    return ["Jensen–Shannon divergence of the function-word distribution to the corpus (lower = closer):",
            "", *_table(["model", "JS divergence"], rows), ""]


def _scores_table(ctx: Context) -> list[str]:
    """Base vs styled style scores from the last validation (metrics logged as base/X and val_style/X)."""
    leaves = sorted({k.split("/", 1)[1] for k in ctx.metrics if k.startswith("base/")}
                    & {k.split("/", 1)[1] for k in ctx.metrics if k.startswith("val_style/")})
    if not leaves:
        return ["Style scores (base/… vs val_style/…): not logged", ""]
    rows = []
    for leaf in leaves:
        better = {"min": "lower", "max": "higher"}.get(_best_direction(leaf) or "", "?")
        rows.append([f"`{leaf}`", _fmt(ctx.metrics[f"base/{leaf}"][-1][1]),
                     _fmt(ctx.metrics[f"val_style/{leaf}"][-1][1]), better])
    return ["Style scores at the last validation:", "",
            *_table(["score", "base model", "styled model", "closer to corpus / better"], rows), ""]


def _samples_table(style_eval: dict, count: int = 3) -> list[str]:
    samples = [s for s in style_eval.get("samples") or [] if isinstance(s, dict)][:count]
    if not samples:
        return ["Sample continuations: not logged", ""]
    rows = [[_cell(str(s.get("prompt", ""))), _cell(str(s.get("base", ""))), _cell(str(s.get("styled", "")))]
            for s in samples]
    return ["Sample continuations (same prompt and sampling seed for both models):", "",
            *_table(["prompt", "base model", "styled model"], rows), ""]


def _function_word_section(ctx: Context) -> list[str]:
    lines = ["## Function words: corpus vs base vs styled", ""]
    style_eval, problem = _read_json(ctx.log_dir / "style_eval.json")
    if problem:
        return lines + [f"style_eval.json: {problem}", "", *_scores_table(ctx)]
    try:  # a hand-edited or truncated file must not cost the rest of the report
        png = plot_function_words(style_eval, ctx.out_dir / "function_words.png")
        chosen = [style_eval["feature_names"][i] for i in _top_features(style_eval, 20)]
        details = _js_table(style_eval) + _scores_table(ctx) + _samples_table(style_eval)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as error:
        problem = f"malformed ({type(error).__name__}: {error})"
        return lines + [f"style_eval.json: {problem}", "", *_scores_table(ctx)]
    return lines + [f"![function words]({png.name})", "", *_font_note(chosen), *details]


def _prediction_columns(rows: Sequence[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            scalar = isinstance(value, int | float | bool | str) or value is None
            if key not in ("prompt", "generation") and scalar and key not in columns:
                columns.append(key)
    return columns


def _predictions_section(predictions_dir: Path | None, count: int = 5) -> list[str]:
    lines = ["## Predictions", ""]
    if predictions_dir is None:
        return lines + ["not logged (no predictions folder given)", ""]
    rows, problem = _read_predictions(predictions_dir)
    summary, summary_problem = _read_json(predictions_dir / "summary.json")
    if isinstance(summary, dict) and summary:
        lines += [f"Summary (`{predictions_dir / 'summary.json'}`):", "",
                  *_table(["figure", "value"], [[f"`{k}`", _fmt(v)] for k, v in summary.items()]), ""]
    else:
        lines += [f"summary.json: {summary_problem or 'empty'}", ""]
    if problem:
        return lines + [f"predictions: {problem}", ""]
    shown = rows[:count]
    columns = _prediction_columns(shown)
    table = [[str(i + 1), _cell(str(r.get("prompt", ""))), _cell(str(r.get("generation", ""))),
              *(_fmt(r[c]) if c in r else "—" for c in columns)] for i, r in enumerate(shown)]
    return lines + [f"First {len(shown)} of {len(rows)} predictions:", "",
                    *_table(["#", "prompt", "generation", *columns], table), ""]


def build_report(log_dir: str | Path, out_dir: str | Path | None = None,
                 predictions_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.md`` plus its PNGs (default ``log_dir/report``) and return its path.

    Raises FileNotFoundError when ``log_dir`` has no ``metrics.csv`` (the only required input)."""
    log_dir = Path(log_dir)
    csv_path = log_dir / "metrics.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"no metrics.csv in {log_dir}")
    out = Path(out_dir) if out_dir is not None else log_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics(csv_path)
    ctx = Context(log_dir, out, metrics, detect_stage(metrics))
    hparams = _read_hparams(log_dir / "hparams.yaml")
    lines = _header(ctx, hparams) + ["## Final values", ""]
    lines += (final_values_table(metrics) if metrics else ["not logged (metrics.csv has no values)"]) + [""]
    lines += _curve_sections(ctx)
    if ctx.stage != 2:
        lines += _function_word_section(ctx)
    lines += _predictions_section(Path(predictions_dir) if predictions_dir is not None else None)
    lines += _hparams_section(hparams)
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


def _curve_sections(ctx: Context) -> list[str]:
    """Stage-specific curves: KL and corruption-mode shares exist only in stage 1, stop rates only in
    stage 2, so the other stage's sections would be pure "not logged" noise."""
    smooth_note = "Faint lines: raw per-step values; solid: EMA; dots: validation."
    lines = _curve_section(ctx, "loss", "Loss", LOSS_KEYS, ylabel="nats / token", note=smooth_note)
    lines += _curve_section(ctx, "ppl", "Perplexity", PPL_KEYS, log_y=True, ylabel="perplexity (log)")
    if ctx.stage != 2:
        lines += _curve_section(ctx, "kl", "KL divergence to the frozen base", KL_KEYS, ylabel="nats / token")
        lines += _curve_section(ctx, "shares", "Corruption mode shares", SHARE_KEYS,
                                ylabel="share of samples", ylim=(-0.02, 1.02))
    if ctx.stage != 1:
        lines += _curve_section(ctx, "rates", "Stop rate", RATE_KEYS, ylabel="rate", ylim=(-0.02, 1.02))
    return lines
