"""Evaluation metrics (torchmetrics, correct under DDP): perplexity, n-gram overlap with the corpus,
function-word distribution, distinct-n and stage-2 stopping."""

from wuxia_lightning.metrics.diversity import DistinctN
from wuxia_lightning.metrics.function_words import (
    FEATURE_NAMES,
    FunctionWordDistribution,
    corpus_function_word_profile,
    function_word_counts,
    js_divergence,
)
from wuxia_lightning.metrics.ngram import KINDS, CorpusNgramIndex, NgramOverlap, text_ngram_hashes
from wuxia_lightning.metrics.perplexity import TokenPerplexity
from wuxia_lightning.metrics.stopping import StopRate, classify_generation, text_continues_dialogue

__all__ = [
    "FEATURE_NAMES",
    "KINDS",
    "CorpusNgramIndex",
    "DistinctN",
    "FunctionWordDistribution",
    "NgramOverlap",
    "StopRate",
    "TokenPerplexity",
    "classify_generation",
    "corpus_function_word_profile",
    "function_word_counts",
    "js_divergence",
    "text_continues_dialogue",
    "text_ngram_hashes",
]
