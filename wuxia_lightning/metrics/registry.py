"""Every metric the Lightning modules log, named once: its key, what it means, which report chart shows
it, whether lower or higher is better, and which stage logs it.

The modules log through these names and the report reads them from here, so a renamed key changes both
at once instead of silently turning a report section into "not logged". ``tests/test_metric_registry.py``
checks that a real fit of each stage logs only registered keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wuxia_lightning.batch import MaskMode
from wuxia_lightning.metrics.ngram import KINDS as NGRAM_KINDS

Better = Literal["lower", "higher"] | None
Chart = Literal["loss", "ppl", "kl", "shares", "rates"]

# Validation loaders of stage 1: the style corpus's held-out chapters and general-domain text.
STYLE_LOADERS: tuple[str, ...] = ("style", "general")
# The n of DistinctN as evaluation.StyleScorer builds it (the default).
DISTINCT_NS: tuple[int, ...] = (1, 2, 3, 4)


# Keys the modules log directly (the per-loader, per-mode and score keys are built by the functions below).
TRAIN_LOSS, TRAIN_CE, TRAIN_KL, TRAIN_PPL = "train/loss", "train/ce", "train/kl", "train/ppl"
TRAIN_REPLAY_KL, TRAIN_TOKENS_PER_S = "train/replay_kl", "train/tokens_per_s"
VAL_LOSS, VAL_PPL = "val/loss", "val/ppl"
STAGE2_PREFIX = "val"  # stage 2's validation scores: val/stop_rate, val/fw_js, …


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    stage: int | None            # 1 = style adapter, 2 = instruct adapter, None = both
    better: Better = None
    charts: tuple[Chart, ...] = ()


def train_metrics() -> list[Metric]:
    return [
        Metric(TRAIN_LOSS, "training loss (the optimised objective)", None, "lower", ("loss",)),
        Metric(TRAIN_CE, "cross-entropy on the labelled tokens", None, "lower", ("loss",)),
        Metric(TRAIN_KL, "KL(policy ‖ base) on the training windows", 1, "lower", ("loss", "kl")),
        Metric(TRAIN_PPL, "training perplexity", None, "lower", ("ppl",)),
        Metric(TRAIN_REPLAY_KL, "KL(style+instruct ‖ style) on replayed style windows", 2, "lower", ("kl",)),
        Metric(TRAIN_TOKENS_PER_S, "tokens per second in the training step", None, "higher"),
        *(Metric(share_key(mode), f"share of {mode.label} masking in the batch", 1, None, ("shares",))
          for mode in MaskMode),
    ]


def share_key(mode: MaskMode) -> str:
    return f"train/share_{mode.label}"


def val_key(loader: str, name: str) -> str:
    """Stage 1's per-loader validation keys (``val_style/ppl``); stage 2 has one loader: ``val/…``."""
    return f"val_{loader}/{name}"


def stage1_validation_metrics() -> list[Metric]:
    metrics = []
    for loader in STYLE_LOADERS:
        text = "held-out chapters of the style corpus" if loader == "style" else "general-domain text"
        metrics += [Metric(val_key(loader, "loss"), f"loss on {text}", 1, "lower", ("loss",) if loader == "style" else ()),
                    Metric(val_key(loader, "ce"), f"cross-entropy on {text}", 1, "lower"),
                    Metric(val_key(loader, "kl"), f"KL(policy ‖ base) on {text}", 1, "lower", ("kl",)),
                    Metric(val_key(loader, "ppl"), f"perplexity on {text}", 1, "lower", ("ppl",))]
    return metrics


def stage2_validation_metrics() -> list[Metric]:
    return [
        Metric(VAL_LOSS, "loss on held-out replies", 2, "lower", ("loss",)),
        Metric(VAL_PPL, "perplexity of held-out replies", 2, "lower", ("ppl",)),
        Metric(score_key(STAGE2_PREFIX, "stop_rate"), "replies that end with a stop token", 2, "higher", ("rates",)),
        Metric(score_key(STAGE2_PREFIX, "continues_dialogue_rate"), "replies that go on to write the user's next turn",
               2, "lower", ("rates",)),
    ]


def generation_scores() -> list[tuple[str, str, Better]]:
    """(name, meaning, better) of the style scores of generated text (``evaluation.StyleScorer``)."""
    return [*((f"ngram_{kind}", f"share of {kind[:4]} {kind[4:]}-grams also found in the style corpus", "higher")
              for kind in NGRAM_KINDS),
            ("fw_js", "JS divergence of the function-word distribution to the corpus's", "lower"),
            ("p_style", "mean P(style) from a classifier of style vs general text (needs a general corpus)",
             "higher"),
            *((f"distinct_{n}", f"distinct {n}-grams / all {n}-grams (repetition)", "higher")
              for n in DISTINCT_NS)]


# Prefixes the style scores are logged under: (prefix, whose generations, stage).
SCORE_PREFIXES: tuple[tuple[str, str, int], ...] = (
    ("val_style", "the styled model's continuations", 1),
    ("base", "the base model's continuations (adapter off)", 1),
    ("val", "stage-2 replies", 2),
)


def score_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}"


def score_metrics() -> list[Metric]:
    return [Metric(score_key(prefix, name), f"{meaning}: {whose}", stage, better)
            for prefix, whose, stage in SCORE_PREFIXES for name, meaning, better in generation_scores()]


def all_metrics() -> list[Metric]:
    return [*train_metrics(), *stage1_validation_metrics(), *stage2_validation_metrics(), *score_metrics()]


REGISTRY: dict[str, Metric] = {metric.key: metric for metric in all_metrics()}


def lookup(key: str) -> Metric | None:
    """The registered metric of a logged key; Lightning's ``_step`` / ``_epoch`` suffixes are the same metric."""
    if key in REGISTRY:
        return REGISTRY[key]
    for suffix in ("_step", "_epoch"):
        if key.endswith(suffix):
            return REGISTRY.get(key[: -len(suffix)])
    return None


def chart_keys(chart: Chart) -> list[str]:
    return [metric.key for metric in REGISTRY.values() if chart in metric.charts]
