"""Dynamic cloze masking for a causal LM, rewritten into an infilling layout.

Every time a window is served, one mode is drawn — ``span`` / ``function_word`` / ``none`` — from a
generator seeded by (seed, epoch, index): the same on any worker or rank, new every epoch.

A decoder cannot see right of a mask, so an inline [MASK] gives no two-sided cloze. A masked window is
laid out as (Qwen's FIM tokens; with one span this is exactly Qwen's own FIM format)::

    <|fim_prefix|> v0 <|fim_suffix|> v1 <|fim_suffix|> v2 … <|fim_middle|> s1 <|fim_pad|> s2 <|fim_pad|> …

visible text with a hole token per masked span, then the hidden spans in order, each closed by a
span-end token. Loss: visible text × ``visible_weight``, hidden spans and their ends × ``hidden_weight``;
hole and separator tokens are never targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wuxia_lightning.batch import MaskMode
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.tokens import FIM_TOKENS, IGNORE_INDEX


@dataclass(frozen=True)
class MaskingConfig:
    span_prob: float = 0.6
    function_word_prob: float = 0.3
    none_prob: float = 0.1
    mask_rate: float = 0.15
    mean_span_length: float = 3.0
    hidden_weight: float = 1.0
    visible_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        probs = (self.span_prob, self.function_word_prob, self.none_prob)
        if min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"mode probabilities must be >= 0 and sum to 1, got {probs}")
        if not 0.0 < self.mask_rate < 1.0 or self.mean_span_length < 1.0:
            raise ValueError("mask_rate must be in (0, 1) and mean_span_length >= 1")

    def max_spans(self, max_length: int) -> int:
        """Span budget so that an infilled window still fits ``max_length`` (function words are short)."""
        return max(1, math.ceil(self.mask_rate * max_length / 2))

    def window_length(self, max_length: int) -> int:
        """Tokens of text per window: the infill layout adds 2 tokens plus 2 per span."""
        return max_length - 2 - 2 * self.max_spans(max_length)


@dataclass(frozen=True)
class InfillTokens:
    begin: int
    hole: int
    separator: int
    span_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> InfillTokens:
        ids = [tokenizer.convert_tokens_to_ids(token) for token in FIM_TOKENS]
        missing = [t for t, i in zip(FIM_TOKENS, ids, strict=True)
                   if i is None or tokenizer.convert_ids_to_tokens(i) != t]
        if missing:
            raise UserInputError(f"the tokenizer has no {missing} tokens, which the infilling layout uses; "
                                 "Qwen2.5/Qwen3 tokenizers have them — pass one with --model.tokenizer_name_or_path",
                                 field="model.tokenizer_name_or_path")
        return cls(*ids)


def generator_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one source of randomness for a sample: identical wherever (seed, epoch, index) is served."""
    return np.random.default_rng([seed, epoch, index])


def draw_mode(rng: np.random.Generator, config: MaskingConfig) -> MaskMode:
    return MaskMode(int(rng.choice(3, p=[config.span_prob, config.function_word_prob, config.none_prob])))


def draw_span_masks(rng: np.random.Generator, maskable: np.ndarray, rate: float, mean_length: float,
                    max_spans: int) -> list[tuple[int, int]]:
    """Non-adjacent spans of geometric length over maskable tokens, covering ≈ ``rate`` of them."""
    target = max(1, round(rate * int(maskable.sum())))
    taken = np.zeros(len(maskable) + 2, dtype=bool)  # padded by one on each side for adjacency checks
    spans: list[tuple[int, int]] = []
    covered, attempts = 0, 0
    while covered < target and len(spans) < max_spans and attempts < 50 * max_spans:
        attempts += 1
        length = min(int(rng.geometric(1.0 / mean_length)), target - covered, len(maskable))
        start = int(rng.integers(0, len(maskable) - length + 1))
        end = start + length
        if maskable[start:end].all() and not taken[start:end + 2].any():
            taken[start + 1:end + 1] = True
            spans.append((start, end))
            covered += length
    return sorted(spans)


def draw_function_word_masks(rng: np.random.Generator, function_word: np.ndarray, maskable: np.ndarray,
                             rate: float, max_spans: int) -> tuple[list[tuple[int, int]], int]:
    """Mask runs of function-word tokens in random order up to ``rate``; returns (spans, shortfall).

    When the window has too few function words we mask what there is and report the shortfall
    in tokens rather than padding with random tokens.
    """
    candidates = _runs(function_word & maskable)
    target = max(1, round(rate * int(maskable.sum())))
    chosen, covered = [], 0
    for i in rng.permutation(len(candidates)):
        if covered >= target or len(chosen) >= max_spans:
            break
        chosen.append(candidates[i])
        covered += candidates[i][1] - candidates[i][0]
    return sorted(chosen), max(0, target - covered)


def build_infill(ids: np.ndarray, spans: list[tuple[int, int]], tokens: InfillTokens,
                 hidden_weight: float = 1.0, visible_weight: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, labels, loss_weights) of the infilling layout for sorted, disjoint ``spans``."""
    pieces: list[tuple[np.ndarray, bool, float]] = [(np.array([tokens.begin]), False, 0.0)]
    cursor = 0
    for start, end in spans:
        pieces += [(ids[cursor:start], True, visible_weight), (np.array([tokens.hole]), False, 0.0)]
        cursor = end
    pieces += [(ids[cursor:], True, visible_weight), (np.array([tokens.separator]), False, 0.0)]
    for start, end in spans:
        pieces += [(ids[start:end], True, hidden_weight), (np.array([tokens.span_end]), True, hidden_weight)]
    input_ids = np.concatenate([piece for piece, _, _ in pieces]).astype(np.int64)
    labels = np.concatenate([piece if target else np.full(len(piece), IGNORE_INDEX)
                             for piece, target, _ in pieces]).astype(np.int64)
    weights = np.concatenate([np.full(len(piece), weight, dtype=np.float32) for piece, _, weight in pieces])
    return input_ids, labels, weights


def rebuild_original(input_ids: np.ndarray, tokens: InfillTokens) -> np.ndarray:
    """Inverse of :func:`build_infill`: put every hidden span back into its hole."""
    ids = list(input_ids)
    assert ids[0] == tokens.begin, "not an infill sample"
    separator = ids.index(tokens.separator)
    visible, hidden = ids[1:separator], ids[separator + 1:]
    spans, current = [], []
    for token in hidden:
        if token == tokens.span_end:
            spans.append(current)
            current = []
        else:
            current.append(token)
    out, span_iter = [], iter(spans)
    for token in visible:
        out.extend(next(span_iter) if token == tokens.hole else [token])
    return np.array(out, dtype=np.int64)


class DynamicMasker:
    """Turns a window into a training sample; all randomness comes from (seed, epoch, index)."""

    def __init__(self, config: MaskingConfig, tokens: InfillTokens, max_length: int) -> None:
        self.config, self.tokens, self.max_spans = config, tokens, config.max_spans(max_length)

    def __call__(self, ids: np.ndarray, function_word: np.ndarray, special: np.ndarray, epoch: int,
                 index: int) -> dict[str, np.ndarray | int]:
        rng = generator_for(self.config.seed, epoch, index)
        mode = draw_mode(rng, self.config)
        maskable = ~special
        shortfall = 0
        if mode is MaskMode.SPAN:
            spans = draw_span_masks(rng, maskable, self.config.mask_rate, self.config.mean_span_length,
                                    self.max_spans)
        elif mode is MaskMode.FUNCTION_WORD:
            spans, shortfall = draw_function_word_masks(rng, function_word, maskable, self.config.mask_rate,
                                                        self.max_spans)
        else:
            spans = []
        if not spans:  # MaskMode.NONE, or nothing maskable: plain causal language modelling on the window
            input_ids = ids.astype(np.int64)
            labels, weights = input_ids.copy(), np.full(len(ids), self.config.visible_weight, dtype=np.float32)
        else:
            input_ids, labels, weights = build_infill(ids, spans, self.tokens, self.config.hidden_weight,
                                                      self.config.visible_weight)
        masked = sum(end - start for start, end in spans)
        return {"input_ids": input_ids, "labels": labels, "loss_weights": weights, "mode": int(mode),
                "masked_tokens": masked, "shortfall_tokens": shortfall}


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, end) pairs."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
