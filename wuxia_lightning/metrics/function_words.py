"""Function-word (虚词) distribution: rates per 1,000 characters and Jensen–Shannon divergence to the corpus.

The feature vocabulary is fixed so that metric states are fixed-size tensors that DDP can sum: one feature
per curated word (``CLASSICAL_FUNCTION_CHARS ∪ STYLE_ADVERBS``, sorted), then one bucket per jieba POS
prefix in ``FUNCTION_POS_PREFIXES`` for every other word jieba tags as a function word. Counting is per
jieba word, so 之 inside the word 之后 is not an occurrence of 之 (the data module's masking agrees).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from wuxia_lightning.data.function_words import (
    CLASSICAL_FUNCTION_CHARS,
    FUNCTION_POS_PREFIXES,
    STYLE_ADVERBS,
    is_function_word,
)
from wuxia_lightning.metrics._cache import atomic_write, content_key, default_cache_dir

CURATED_WORDS: tuple[str, ...] = tuple(sorted(CLASSICAL_FUNCTION_CHARS | STYLE_ADVERBS))
POS_FEATURES: tuple[str, ...] = tuple(f"<pos:{prefix}>" for prefix in FUNCTION_POS_PREFIXES)
FEATURE_NAMES: tuple[str, ...] = CURATED_WORDS + POS_FEATURES
_CURATED_INDEX = {word: i for i, word in enumerate(CURATED_WORDS)}


def _feature_index(word: str, pos: str) -> int | None:
    """Feature of one jieba (word, POS) pair, or None when it is not a function word."""
    if not is_function_word(word, pos):
        return None
    if word in _CURATED_INDEX:
        return _CURATED_INDEX[word]
    for i, prefix in enumerate(FUNCTION_POS_PREFIXES):
        if pos.startswith(prefix):
            return len(CURATED_WORDS) + i
    return None  # unreachable while is_function_word and the prefixes agree


def function_word_counts(text: str) -> np.ndarray:
    """Occurrences of each feature in :data:`FEATURE_NAMES` (int64 vector)."""
    import jieba.posseg as posseg  # local import: jieba loads its dictionary lazily

    counts = np.zeros(len(FEATURE_NAMES), dtype=np.int64)
    for pair in posseg.cut(text, HMM=False):
        index = _feature_index(pair.word, pair.flag)
        if index is not None:
            counts[index] += 1
    return counts


def count_characters(text: str) -> int:
    """Characters that count towards the per-1,000 rate: everything except whitespace (incl. U+3000)."""
    return sum(len(part) for part in text.split())


def corpus_function_word_profile(texts: Sequence[str], cache_dir: str | Path | None = None) -> Tensor:
    """Summed feature counts of a corpus (int64), the ``reference_counts`` of :class:`FunctionWordDistribution`.

    POS-tagging the 13 MB style corpus takes ~18 s on one core, so the result is cached like the n-gram index.
    """
    import jieba

    if isinstance(texts, str):
        texts = [texts]
    key = content_key(texts, {"features": FEATURE_NAMES, "jieba": jieba.__version__, "hmm": False,
                              "jieba_dict": str(jieba.dt.dictionary)})
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir("function_words")).expanduser()
    path = folder / f"profile-{key[:32]}.npy"
    if path.exists():
        counts = np.load(path, allow_pickle=False)
        if counts.shape == (len(FEATURE_NAMES),):
            return torch.from_numpy(counts.astype(np.int64))
    counts = sum((function_word_counts(text) for text in texts), np.zeros(len(FEATURE_NAMES), np.int64))
    atomic_write(path, lambda tmp: np.save(tmp, counts))
    return torch.from_numpy(counts)


def js_divergence(p_counts: Tensor, q_counts: Tensor) -> Tensor:
    """Jensen–Shannon divergence in bits (0..1) between two count vectors, after normalising each.

    Zero entries contribute 0 (the limit of x·log x); NaN when either vector has no mass.
    """
    p = p_counts.double() / p_counts.double().sum()
    q = q_counts.double() / q_counts.double().sum()
    m = (p + q) / 2
    zero = torch.zeros((), dtype=torch.float64, device=p.device)
    # where() keeps 0·log(0/·) out of the sum; m > 0 wherever p > 0 or q > 0.
    kl_pm = torch.where(p > 0, p * (torch.log2(p) - torch.log2(m)), zero).sum()
    kl_qm = torch.where(q > 0, q * (torch.log2(q) - torch.log2(m)), zero).sum()
    return (kl_pm + kl_qm) / 2


class FunctionWordDistribution(Metric):
    """Function-word rates of generated text, and JS divergence to a reference (corpus) profile.

    ``compute()`` → ``{"rates": float64 vector per 1,000 non-whitespace characters, aligned with
    FEATURE_NAMES, "js_divergence": scalar (only with a reference)}``.
    """

    is_differentiable = False
    higher_is_better = False  # js_divergence: closer to the corpus is better; rates have no direction
    full_state_update = False

    def __init__(self, reference_counts: Tensor | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        size = len(FEATURE_NAMES)
        self.add_state("counts", default=torch.zeros(size, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("characters", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        reference = None
        if reference_counts is not None:
            reference = torch.as_tensor(reference_counts).double().flatten()
            if reference.shape != (size,) or bool((reference < 0).any()):
                raise ValueError(f"reference_counts must be {size} non-negative counts aligned with "
                                 f"FEATURE_NAMES; got shape {tuple(reference.shape)}")
        # A buffer, not a state: it moves with .to(device) but is neither reset nor reduced.
        self.register_buffer("reference", reference, persistent=False)

    def update(self, texts: str | Sequence[str]) -> None:
        if isinstance(texts, str):
            texts = [texts]
        counts = np.zeros(len(FEATURE_NAMES), dtype=np.int64)
        characters = 0
        for text in texts:
            counts += function_word_counts(text)
            characters += count_characters(text)
        self.counts += torch.from_numpy(counts).to(self.counts.device)
        self.characters += characters

    def compute(self) -> dict[str, Tensor]:
        result = {"rates": self.counts.double() * 1000.0 / self.characters.double()}
        if self.reference is not None:
            result["js_divergence"] = js_divergence(self.counts, self.reference)
        return result
