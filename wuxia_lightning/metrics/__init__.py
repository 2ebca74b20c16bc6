"""Evaluation metrics (torchmetrics, correct under DDP): perplexity, n-gram overlap with the corpus,
function-word distribution, distinct-n, stage-2 stopping, character ROUGE-L and P(style)."""

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
from wuxia_lightning.metrics.rouge import CharRougeL, char_rouge_l
from wuxia_lightning.metrics.stopping import StopRate, classify_generation, text_continues_dialogue
from wuxia_lightning.metrics.style_classifier import StyleClassifier, StyleProbability, chunk_texts

__all__ = [
    "FEATURE_NAMES",
    "KINDS",
    "CharRougeL",
    "CorpusNgramIndex",
    "DistinctN",
    "FunctionWordDistribution",
    "NgramOverlap",
    "StopRate",
    "StyleClassifier",
    "StyleProbability",
    "TokenPerplexity",
    "char_rouge_l",
    "chunk_texts",
    "classify_generation",
    "corpus_function_word_profile",
    "function_word_counts",
    "js_divergence",
    "text_continues_dialogue",
    "text_ngram_hashes",
]
