"""The scorecard of a set of generations, per variant: who the replies read like, and how they read.

``score_generations(records, model)`` is the one entry point (the CLI, the replication and per-author
adapter runs call it); it returns a plain dict that ``scorecard.json`` stores as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np

from wuxia_lightning.metrics.authorship import AUTHOR_NAMES, AuthorshipModel, normalise
from wuxia_lightning.scorecard.records import MIN_REPLIES, Generation, by_variant, check_counts, parse_record

REPEAT_N = 10  # a reply that repeats a 10-character span is looping (a name or set phrase is shorter)


def score_generations(records: Sequence[Generation | Mapping], model: AuthorshipModel,
                      lm_scores: Mapping[str, Mapping[str, float]] | None = None,
                      min_replies: int = MIN_REPLIES) -> dict:
    """``{"classifier": …, "variants": {name: …}}``; ``lm_scores`` (author_lm.py) adds cross-entropies.

    Dict records are checked like a file's lines (variant defaults to ``"default"``)."""
    generations = [r if isinstance(r, Generation) else parse_record(r, model.classes, "default") for r in records]
    check_counts(generations, min_replies)
    variants = {}
    for name, group in by_variant(generations).items():
        variants[name] = {**score_variant(group, model), **_lm_columns((lm_scores or {}).get(name))}
    return {"classifier": classifier_summary(model), "variants": variants}


def classifier_summary(model: AuthorshipModel) -> dict:
    record = model.heldout
    return {"classes": model.classes, "names": {c: AUTHOR_NAMES.get(c, c) for c in model.classes},
            "heldout_accuracy": record.accuracy, "passage_length": record.passage_length,
            "n_test": record.n_test, "n_train": record.n_train, "confusion": record.confusion,
            "recall": record.recall, "accuracy_by_length": record.accuracy_by_length,
            "delta_nearest_heldout": record.delta_nearest, "settings": asdict(model.settings)}


def score_variant(group: Sequence[Generation], model: AuthorshipModel) -> dict:
    texts = [normalise(g.reply) for g in group]
    scored = [i for i, t in enumerate(texts) if t]  # an empty reply has no author
    predicted = dict(zip(scored, model.classifier.predict([texts[i] for i in scored]), strict=True))
    counts = Counter(predicted.values())
    distances = model.delta.distances("".join(texts))
    targeted = [i for i, g in enumerate(group) if g.target_author is not None]
    stops = [g.stopped for g in group]
    return {
        "n": len(group), "n_scored": len(scored),
        "attribution": {c: counts[c] / max(1, len(scored)) for c in model.classes},
        "target_author": _single(group[i].target_author for i in targeted),
        "target_rate": (sum(predicted.get(i) == group[i].target_author for i in targeted) / len(targeted)
                        if targeted else None),
        "delta": distances, "delta_nearest": min(distances, key=distances.get),
        "stop_rate": None if None in stops else sum(stops) / len(stops),
        "distinct_2": distinct_2([g.reply for g in group]),
        "mean_length": float(np.mean([len("".join(g.reply.split())) for g in group])),
        "repeat_10gram_rate": float(np.mean([repeats_ngram(g.reply, REPEAT_N) for g in group])),
    }


def _single(targets) -> str | None:
    """The variant's target author when all its replies share one, "mixed" when they do not."""
    distinct = set(targets)
    return None if not distinct else distinct.pop() if len(distinct) == 1 else "mixed"


def _lm_columns(scores: Mapping[str, float] | None) -> dict:
    keys = ("ce_style", "ce_base", "ce_vs_base")
    return {k: (None if scores is None else scores[k]) for k in keys}


def distinct_2(replies: Sequence[str]) -> float | None:
    """Unique / total character bigrams over all replies (the package's DistinctN, whitespace kept out)."""
    from wuxia_lightning.metrics import DistinctN

    metric = DistinctN((2,))
    metric.update(["".join(r.split()) for r in replies])
    value = float(metric.compute()["distinct_2"])
    return None if np.isnan(value) else value


def repeats_ngram(text: str, n: int = REPEAT_N) -> bool:
    """True when some ``n``-character span occurs twice (overlaps count) in the reply."""
    compact = "".join(text.split())
    seen: set[str] = set()
    for i in range(len(compact) - n + 1):
        span = compact[i:i + n]
        if span in seen:
            return True
        seen.add(span)
    return False
