"""Style scores of generated text against a source corpus: n-gram overlap, function words, repetition,
and — given general text to contrast with — P(style) from a classifier trained on the two.

One object bundles the torchmetrics so both stages (validation, predict) and the replication score the
same way. The corpus n-gram index, function-word profile and classifier are built once per corpus and
cached by content hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wuxia_lightning.metrics import (
    CorpusNgramIndex,
    DistinctN,
    FunctionWordDistribution,
    NgramOverlap,
    corpus_function_word_profile,
)
from wuxia_lightning.metrics.function_words import count_characters
from wuxia_lightning.metrics.style_classifier import StyleClassifier, StyleProbability

# Characters per class the classifier is fitted on: a few thousand 100-character chunks are plenty for
# character n-gram features, and fitting stays a matter of seconds on a novel-sized corpus.
CLASSIFIER_CHARACTERS = 1_000_000


class StyleScorer(torch.nn.Module):
    """``update(texts)`` then ``compute()`` → flat dict of floats (DDP-reduced by torchmetrics)."""

    def __init__(self, corpus_texts: Sequence[str], cache_dir: str | None = None,
                 other_texts: Sequence[str] | None = None) -> None:
        super().__init__()
        texts = list(corpus_texts)
        self.index = CorpusNgramIndex.build(texts, cache_dir=cache_dir)
        self.profile = corpus_function_word_profile(texts, cache_dir=cache_dir)
        self.corpus_characters = sum(count_characters(text) for text in texts)
        self.classifier = (StyleClassifier.load_or_fit(capped(texts, CLASSIFIER_CHARACTERS),
                                                       capped(other_texts, CLASSIFIER_CHARACTERS), cache_dir)
                           if other_texts else None)
        self.ngram, self.function_words, self.distinct = self._fresh_metrics()
        self.style_probability = StyleProbability(self.classifier) if self.classifier is not None else None

    @classmethod
    def from_corpus(cls, sources: str | Sequence[str], to_simplified: bool, cache_dir: str | None = None,
                    other_sources: str | Sequence[str] | None = None) -> StyleScorer:
        """Read the corpus files (any encoding, cleaned as for training) and index them; with
        ``other_sources`` (general text), also fit the style classifier."""
        from wuxia_lightning.data.corpus import read_corpus

        documents, _ = read_corpus(sources, to_simplified=to_simplified)
        other = [d.text for d in read_corpus(other_sources, to_simplified=to_simplified)[0]] if other_sources else None
        return cls([document.text for document in documents], cache_dir=cache_dir, other_texts=other)

    def _fresh_metrics(self) -> tuple[NgramOverlap, FunctionWordDistribution, DistinctN]:
        return NgramOverlap(self.index), FunctionWordDistribution(self.profile), DistinctN()

    def _metrics(self) -> list:
        return [self.ngram, self.function_words, self.distinct,
                *([self.style_probability] if self.style_probability is not None else [])]

    def update(self, texts: Sequence[str]) -> None:
        for metric in self._metrics():
            metric.update(list(texts))

    def compute(self) -> dict[str, float]:
        scores = _scores(self.ngram, self.function_words, self.distinct)
        if self.style_probability is not None:
            scores["p_style"] = float(self.style_probability.compute())
        return scores

    def reset(self) -> None:
        for metric in self._metrics():
            metric.reset()

    def rates(self) -> list[float]:
        """Function-word rates of the generations per 1,000 characters, aligned with FEATURE_NAMES."""
        return [float(v) for v in self.function_words.compute()["rates"]]

    def corpus_rates(self) -> list[float]:
        return [float(v) * 1000.0 / max(1, self.corpus_characters) for v in self.profile]

    def score_one(self, text: str) -> dict[str, float]:
        """Per-sample figures: fresh metric states over the same corpus index."""
        metrics = self._fresh_metrics()
        for metric in metrics:
            metric.update([text])
        scores = _scores(*metrics)
        if self.classifier is not None:
            scores["p_style"] = float(self.classifier.predict_proba([text])[0])
        return scores


def capped(texts: Sequence[str], characters: int) -> list[str]:
    """The texts in order, cut so that together they hold at most ``characters`` characters."""
    kept, total = [], 0
    for text in texts:
        if total >= characters:
            break
        kept.append(text[: characters - total])
        total += len(kept[-1])
    return kept


def _scores(ngram: NgramOverlap, function_words: FunctionWordDistribution, distinct: DistinctN) -> dict[str, float]:
    scores = {f"ngram_{kind}": float(value) for kind, value in ngram.compute().items()}
    scores["fw_js"] = float(function_words.compute()["js_divergence"])
    scores.update({name: float(value) for name, value in distinct.compute().items()})
    return scores
