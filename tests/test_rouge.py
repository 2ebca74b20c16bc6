"""Character ROUGE-L: hand-computed values, an independent reference (torchmetrics), and the metric."""

from __future__ import annotations

import random

import pytest
import torch
from torchmetrics.text import ROUGEScore

from wuxia_lightning.metrics import CharRougeL, char_rouge_l


def f1(lcs: int, prediction_length: int, reference_length: int) -> float:
    precision, recall = lcs / prediction_length, lcs / reference_length
    return 2 * precision * recall / (precision + recall)


def test_identical_and_disjoint():
    assert char_rouge_l("剑光一闪", "剑光一闪") == 1.0
    assert char_rouge_l("剑光一闪", "手机电脑") == 0.0


def test_worked_example():
    # LCS of 江湖夜雨 / 江湖风雨夜 is 江湖雨 (or 江湖夜): 3, so P = 3/4, R = 3/5.
    assert char_rouge_l("江湖夜雨", "江湖风雨夜") == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert char_rouge_l("江湖夜雨", "江湖风雨夜") == pytest.approx(2 / 3)
    # Not symmetric in P and R, but F1 is.
    assert char_rouge_l("江湖风雨夜", "江湖夜雨") == pytest.approx(2 / 3)


def test_subsequence_not_substring():
    # 甲乙丙 is a subsequence of 甲X乙Y丙 but shares no bigram with it: ROUGE-L must find all 3.
    assert char_rouge_l("甲乙丙", "甲子乙丑丙") == pytest.approx(f1(3, 3, 5))


def test_whitespace_ignored_and_empty():
    assert char_rouge_l(" 江湖\n夜雨 ", "江湖\u3000风雨夜") == pytest.approx(2 / 3)
    assert char_rouge_l("", "") == 0.0
    assert char_rouge_l(" \n", "江湖") == 0.0
    assert char_rouge_l("江湖", "") == 0.0


def test_matches_torchmetrics_with_character_tokenizer():
    # torchmetrics' default normalizer deletes CJK characters; with an identity one it is a valid reference.
    reference = ROUGEScore(tokenizer=list, normalizer=lambda text: text, rouge_keys="rougeL")
    rng = random.Random(0)
    alphabet = "江湖夜雨剑光风云山水"
    for _ in range(50):
        prediction = "".join(rng.choices(alphabet, k=rng.randint(1, 30)))
        target = "".join(rng.choices(alphabet, k=rng.randint(1, 30)))
        expected = float(reference([prediction], [target])["rougeL_fmeasure"])
        assert char_rouge_l(prediction, target) == pytest.approx(expected, abs=1e-6)


def test_metric_mean_over_pairs_and_reset():
    metric = CharRougeL()
    metric.update(["江湖夜雨", "剑光一闪"], ["江湖风雨夜", "剑光一闪"])
    metric.update(["手机"], ["剑光"])
    value = metric.compute()
    assert value.dtype == torch.float64 and value.shape == ()
    assert float(value) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    metric.reset()
    metric.update(["江湖"], ["江湖"])
    assert float(metric.compute()) == 1.0
