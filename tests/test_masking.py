"""Dynamic masking: mode shares, reproducibility, infill layout that rebuilds the original exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE_TEXT

from wuxia_lightning.batch import MaskMode
from wuxia_lightning.data.masking import (
    DynamicMasker,
    InfillTokens,
    MaskingConfig,
    build_infill,
    draw_mode,
    generator_for,
    rebuild_original,
)
from wuxia_lightning.data.style_datamodule import EpochIndexSampler, MaskedWindowDataset
from wuxia_lightning.data.token_cache import tokenize_document
from wuxia_lightning.data.windows import build_stream
from wuxia_lightning.tokens import IGNORE_INDEX

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def stream(small_tokenizer):
    from wuxia_lightning.data.corpus import Document

    docs = [tokenize_document(small_tokenizer, Document("a.txt", i, "t", SAMPLE_TEXT * 3)) for i in range(4)]
    eos = small_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return build_stream(docs, eos, MaskingConfig().window_length(MAX_LENGTH))


@pytest.fixture(scope="module")
def masker(small_tokenizer):
    return DynamicMasker(MaskingConfig(seed=7), InfillTokens.from_tokenizer(small_tokenizer), MAX_LENGTH)


def test_mode_shares_within_two_percent_over_10000_draws():
    config = MaskingConfig(seed=123)
    draws = [draw_mode(generator_for(config.seed, 0, index), config) for index in range(10_000)]
    shares = {mode.label: draws.count(mode) / len(draws) for mode in MaskMode}
    assert abs(shares["span"] - 0.6) <= 0.02
    assert abs(shares["function_word"] - 0.3) <= 0.02
    assert abs(shares["none"] - 0.1) <= 0.02


def test_custom_mode_shares_are_respected():
    config = MaskingConfig(span_prob=0.2, function_word_prob=0.2, none_prob=0.6, seed=1)
    draws = [draw_mode(generator_for(1, 3, i), config) for i in range(10_000)]
    assert abs(draws.count(MaskMode.NONE) / 10_000 - 0.6) <= 0.02


def test_same_draw_for_same_seed_epoch_index_and_new_draw_each_epoch(stream, masker):
    first = [masker(*stream.window(i % len(stream)), epoch=0, index=i) for i in range(40)]
    again = [masker(*stream.window(i % len(stream)), epoch=0, index=i) for i in range(40)]
    later = [masker(*stream.window(i % len(stream)), epoch=1, index=i) for i in range(40)]
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    changed = sum(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, later, strict=True))
    assert changed >= 20


def test_same_draw_in_worker_processes_and_across_ranks(stream, masker):
    """Two DataLoader workers, and two 'ranks' of the sampler, serve exactly the in-process draws."""
    dataset = MaskedWindowDataset(stream, masker)
    expected = {i: masker(*stream.window(i), epoch=2, index=i)["input_ids"] for i in range(len(stream))}
    for rank in range(2):
        sampler = EpochIndexSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=2)
        served = list(loader)
        indices = list(iter(sampler))
        assert len(served) == len(indices)
        for (epoch, index), sample in zip(indices, served, strict=True):
            assert epoch == 2
            assert np.array_equal(np.asarray(sample["input_ids"]), expected[index])


def test_infill_rebuilds_the_original_text_exactly(stream, masker, small_tokenizer):
    tokens = masker.tokens
    masked = 0
    for index in range(len(stream)):
        for epoch in range(3):
            ids, _, _ = stream.window(index)
            sample = masker(*stream.window(index), epoch=epoch, index=index)
            if sample["mode"] == MaskMode.NONE or sample["masked_tokens"] == 0:
                assert np.array_equal(sample["input_ids"], ids)
                continue
            masked += 1
            rebuilt = rebuild_original(sample["input_ids"], tokens)
            assert np.array_equal(rebuilt, ids)
            assert small_tokenizer.decode(rebuilt) == small_tokenizer.decode(ids)
            assert len(sample["input_ids"]) <= MAX_LENGTH
    assert masked > 0


def test_infill_labels_skip_holes_and_separator(small_tokenizer):
    tokens = InfillTokens.from_tokenizer(small_tokenizer)
    ids = np.arange(100, 120)
    input_ids, labels, weights = build_infill(ids, [(2, 5), (10, 11)], tokens, hidden_weight=2.0,
                                              visible_weight=0.5)
    special = np.isin(input_ids, [tokens.begin, tokens.hole, tokens.separator])
    assert (labels[special] == IGNORE_INDEX).all() and (weights[special] == 0).all()
    separator = int(np.flatnonzero(input_ids == tokens.separator)[0])
    assert input_ids[separator + 1:].tolist() == [102, 103, 104, tokens.span_end, 110, tokens.span_end]
    assert (weights[separator + 1:] == 2.0).all()
    assert set(weights[1:separator][~special[1:separator]].tolist()) == {0.5}


def test_span_mode_masks_about_mask_rate_and_never_special_tokens(stream, small_tokenizer):
    config = MaskingConfig(span_prob=1.0, function_word_prob=0.0, none_prob=0.0, seed=3)
    masker = DynamicMasker(config, InfillTokens.from_tokenizer(small_tokenizer), MAX_LENGTH)
    rates = []
    for index in range(len(stream)):
        ids, fw, special = stream.window(index)
        special = special.copy()
        special[::5] = True  # pretend more specials exist, they must never be hidden
        sample = masker(ids, fw, special, epoch=0, index=index)
        rates.append(sample["masked_tokens"] / (~special).sum())
        sep = int(np.flatnonzero(sample["input_ids"] == masker.tokens.separator)[0])
        hidden = sample["input_ids"][sep + 1:]
        special_ids = set(ids[special].tolist())
        assert not (set(hidden.tolist()) - {masker.tokens.span_end}) & special_ids - set(ids[~special].tolist())
    assert 0.10 <= float(np.mean(rates)) <= 0.20


def test_function_word_mode_hides_only_function_words(stream, small_tokenizer):
    config = MaskingConfig(span_prob=0.0, function_word_prob=1.0, none_prob=0.0, seed=5)
    masker = DynamicMasker(config, InfillTokens.from_tokenizer(small_tokenizer), MAX_LENGTH)
    for index in range(len(stream)):
        ids, fw, special = stream.window(index)
        sample = masker(ids, fw, special, epoch=0, index=index)
        rebuilt_positions = _masked_positions(sample["input_ids"], masker.tokens, len(ids))
        assert fw[rebuilt_positions].all()
    no_function_words = masker(ids, np.zeros_like(fw), special, epoch=0, index=0)
    assert no_function_words["masked_tokens"] == 0 and no_function_words["shortfall_tokens"] > 0


def _masked_positions(input_ids: np.ndarray, tokens: InfillTokens, length: int) -> np.ndarray:
    """Positions in the original window that were hidden, recovered from the layout."""
    if input_ids[0] != tokens.begin:
        return np.zeros(0, dtype=np.int64)
    separator = int(np.flatnonzero(input_ids == tokens.separator)[0])
    span_lengths = np.diff(np.concatenate([[separator], np.flatnonzero(input_ids == tokens.span_end)])) - 1
    positions, cursor, spans = [], 0, iter(span_lengths)
    for token in input_ids[1:separator]:
        if token == tokens.hole:
            n = int(next(spans))
            positions += range(cursor, cursor + n)
            cursor += n
        else:
            cursor += 1
    assert cursor == length
    return np.array(positions, dtype=np.int64)
