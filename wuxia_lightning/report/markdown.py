"""The report as Markdown: header, final values, one section per chart, function words, predictions,
hyper-parameters. Which metric goes into which chart, and which direction is better, comes from
``metrics.registry``, the names the modules log through."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wuxia_lightning.metrics.registry import chart_keys, lookup, score_key
from wuxia_lightning.report.fonts import feature_label, find_cjk_font, font_covers
from wuxia_lightning.report.inputs import (
    Metrics,
    detect_stage,
    read_hparams,
    read_json,
    read_metrics,
    read_predictions,
)
from wuxia_lightning.report.plots import finite_points, plot_curves, plot_function_words, top_features

PREFIX_ORDER = ("train", "val_style", "val_general", "val", "base")
STYLED, BASE = "val_style", "base"  # prefixes of stage 1's style scores (metrics.registry.SCORE_PREFIXES)
PREVIEW_CHARS = 300  # longer texts are cut in the Markdown tables so a row stays readable


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
    """"min" / "max" from the registry; None for keys it does not know (no "best" is claimed for them)."""
    registered = lookup(metric)
    better = registered.better if registered is not None else None
    return {"lower": "min", "higher": "max"}.get(better or "")


def best_value(metric: str, points: Sequence[tuple[int, float]]) -> tuple[int, float] | None:
    """Best (step, value) of a validation metric; None for training/base metrics or unknown direction."""
    direction = _best_direction(metric)
    finite = finite_points(points, positive=False)
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


@dataclass
class Context:
    log_dir: Path
    out_dir: Path
    metrics: Metrics
    stage: int | None


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
    metric = lookup(key)
    return metric.stage if metric is not None else None


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
        # labels the font cannot draw (only possible with a subset) are code points: give them a key too
        key = " · ".join(f"{feature_label(f, False)} = {f}" for f in chosen
                         if not f.isascii() and not font_covers(font.path, f))
        where = (" (the subset bundled with wuxia_lightning: no CJK font found on this system; install e.g. "
                 "`fonts-noto-cjk` for a full one)" if font.bundled else "")
        return [f"Chart font for Chinese labels: {font.name} (`{font.path}`){where}.", "",
                *([f"Key: {key}", ""] if key else [])]
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
    leaves = sorted({k.split("/", 1)[1] for k in ctx.metrics if k.startswith(BASE + "/")}
                    & {k.split("/", 1)[1] for k in ctx.metrics if k.startswith(STYLED + "/")})
    if not leaves:
        return ["Style scores (base/… vs val_style/…): not logged", ""]
    rows = []
    for leaf in leaves:
        better = {"min": "lower", "max": "higher"}.get(_best_direction(score_key(STYLED, leaf)) or "", "?")
        rows.append([f"`{leaf}`", _fmt(ctx.metrics[score_key(BASE, leaf)][-1][1]),
                     _fmt(ctx.metrics[score_key(STYLED, leaf)][-1][1]), better])
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
    style_eval, problem = read_json(ctx.log_dir / "style_eval.json")
    if problem:
        return lines + [f"style_eval.json: {problem}", "", *_scores_table(ctx)]
    try:  # a hand-edited or truncated file must not cost the rest of the report
        png = plot_function_words(style_eval, ctx.out_dir / "function_words.png")
        chosen = [style_eval["feature_names"][i] for i in top_features(style_eval, 20)]
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
    rows, problem = read_predictions(predictions_dir)
    summary, summary_problem = read_json(predictions_dir / "summary.json")
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
    hparams = read_hparams(log_dir / "hparams.yaml")
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
    lines = _curve_section(ctx, "loss", "Loss", chart_keys("loss"), ylabel="nats / token", note=smooth_note)
    lines += _curve_section(ctx, "ppl", "Perplexity", chart_keys("ppl"), log_y=True, ylabel="perplexity (log)")
    if ctx.stage != 2:
        lines += _curve_section(ctx, "kl", "KL divergence to the frozen base", chart_keys("kl"), ylabel="nats / token")
        lines += _curve_section(ctx, "shares", "Corruption mode shares", chart_keys("shares"),
                                ylabel="share of samples", ylim=(-0.02, 1.02))
    if ctx.stage != 1:
        lines += _curve_section(ctx, "rates", "Stop rate", chart_keys("rates"), ylabel="rate", ylim=(-0.02, 1.02))
    return lines
