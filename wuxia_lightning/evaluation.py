"""Style scores of generated text against a source corpus: n-gram overlap, function words, repetition.

One object bundles the three torchmetrics so both stages (validation, predict) and the replication score
the same way. The corpus n-gram index and function-word profile are built once per corpus and cached by
content hash.
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


class StyleScorer(torch.nn.Module):
    """``update(texts)`` then ``compute()`` → flat dict of floats (DDP-reduced by torchmetrics)."""

    def __init__(self, corpus_texts: Sequence[str], cache_dir: str | None = None) -> None:
        super().__init__()
        texts = list(corpus_texts)
        self.index = CorpusNgramIndex.build(texts, cache_dir=cache_dir)
        self.profile = corpus_function_word_profile(texts, cache_dir=cache_dir)
        self.corpus_characters = sum(count_characters(text) for text in texts)
        self.ngram, self.function_words, self.distinct = self._fresh_metrics()

    @classmethod
    def from_corpus(cls, sources: str | Sequence[str], to_simplified: bool, cache_dir: str | None = None
                    ) -> StyleScorer:
        """Read the corpus files (any encoding, cleaned as for training) and index them."""
        from wuxia_lightning.data.corpus import read_corpus

        documents, _ = read_corpus(sources, to_simplified=to_simplified)
        return cls([document.text for document in documents], cache_dir=cache_dir)

    def _fresh_metrics(self) -> tuple[NgramOverlap, FunctionWordDistribution, DistinctN]:
        return NgramOverlap(self.index), FunctionWordDistribution(self.profile), DistinctN()

    def update(self, texts: Sequence[str]) -> None:
        for metric in (self.ngram, self.function_words, self.distinct):
            metric.update(list(texts))

    def compute(self) -> dict[str, float]:
        return _scores(self.ngram, self.function_words, self.distinct)

    def reset(self) -> None:
        for metric in (self.ngram, self.function_words, self.distinct):
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
        return _scores(*metrics)


def _scores(ngram: NgramOverlap, function_words: FunctionWordDistribution, distinct: DistinctN) -> dict[str, float]:
    scores = {f"ngram_{kind}": float(value) for kind, value in ngram.compute().items()}
    scores["fw_js"] = float(function_words.compute()["js_divergence"])
    scores.update({name: float(value) for name, value in distinct.compute().items()})
    return scores
