"""The report's charts: training curves and function-word rate bars, as PNG files.

Plots are drawn on bare ``Figure`` objects with the Agg canvas, never through pyplot: no display is
needed and no global pyplot state (backend, open figures) leaks into the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from wuxia_lightning.report.fonts import CjkFont, feature_label, find_cjk_font, font_covers
from wuxia_lightning.report.inputs import Metrics


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


def finite_points(points: Iterable[tuple[int, float]], positive: bool) -> list[tuple[int, float]]:
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
    present = [(k, finite_points(metrics[k], positive=log_y)) for k in keys if k in metrics]
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


def top_features(style_eval: dict, top_k: int) -> list[int]:
    """Indices of the ``top_k`` features with the highest corpus rate (ties keep vocabulary order)."""
    corpus = style_eval["rates"]["corpus"]
    return sorted(range(len(corpus)), key=lambda i: -corpus[i])[:top_k]


FW_SERIES = (("corpus", "corpus", "C7"), ("base", "base model", "C0"), ("styled", "styled model", "C3"))


def draw_rate_bars(axes, style_eval: dict, chosen: Sequence[int], font: CjkFont | None) -> None:
    rates, js = style_eval["rates"], style_eval.get("js_divergence") or {}
    height = 0.8 / len(FW_SERIES)
    for offset, (key, label, color) in enumerate(FW_SERIES):
        if key in rates:
            label = f"{label} (JS {js[key]:.3f})" if key in js else label
            y = [row + (offset - 1) * height for row in range(len(chosen))]
            axes.barh(y, [rates[key][i] for i in chosen], height=height, color=color, label=label)
    names = [style_eval["feature_names"][i] for i in chosen]
    labels = [feature_label(name, font is not None and font_covers(font.path, name)) for name in names]
    label_font = {"fontproperties": FontProperties(fname=font.path)} if font else {}
    axes.set_yticks(range(len(chosen)), labels, **label_font)
    axes.set_ylim(len(chosen) - 0.5, -0.5)  # the most frequent corpus feature on top, no empty margins
    axes.grid(True, axis="x", alpha=0.3)


def plot_function_words(style_eval: dict, out_png: str | Path, top_k: int = 20) -> Path:
    """Grouped horizontal bars of function-word rates (per 1,000 characters): corpus, base, styled.

    Horizontal so that labels read left to right whatever their length. The jieba POS buckets ("all
    other particles", …) are 10-50x more frequent than any single word, so they get their own panel
    with its own scale; on a shared axis the individual words would shrink to slivers."""
    chosen = top_features(style_eval, top_k)
    names = style_eval["feature_names"]
    groups = [g for g in ([i for i in chosen if not names[i].startswith("<pos:")],
                          [i for i in chosen if names[i].startswith("<pos:")]) if g]
    font = find_cjk_font()
    figure = _new_figure(8.5, 1.8 + 0.42 * len(chosen))
    grid = figure.add_gridspec(len(groups), 1, height_ratios=[len(g) for g in groups])
    for row, group in enumerate(groups):
        axes = figure.add_subplot(grid[row])
        draw_rate_bars(axes, style_eval, group, font)
        pos = names[group[0]].startswith("<pos:")
        kind = "jieba POS buckets (all other words of the class)" if pos else "single function words"
        axes.set_title(kind, fontsize="medium", loc="left")
    axes.set_xlabel("occurrences per 1,000 characters")
    figure.suptitle(f"Function-word rates, top {len(chosen)} features by corpus rate")
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=3,
                  fontsize="small", frameon=False)
    return _save(figure, out_png)
