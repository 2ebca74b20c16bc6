"""Style classifier: chunking, held-out accuracy (synthetic and real text), caching and the metric."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import SHARED, require_shared
from sklearn.metrics import roc_auc_score

from wuxia_lightning.metrics import StyleClassifier, StyleProbability, chunk_texts

# Two text families from disjoint phrase pools (checked below), plus shared filler so that a chunk
# is not recognisable from every single character.
CLASSICAL = ("且说 只见 长揖 久仰 剑光 一闪 施主 何必 乃是 竟 焉 乎 矣 者也 却 侠客 江湖 恩仇 掌门 "
             "武功 内力 轻功 飞檐 走壁 少侠 老夫 在下 贫道 阁下 抱拳 拔剑 血溅 三尺 客栈 酒肆 拂袖 叹曰").split()
MODERN = ("我们 今天 手机 电脑 公司 会议 因为 所以 非常 可能 已经 开始 工作 朋友 周末 地铁 超市 咖啡 "
          "网络 视频 软件 数据 项目 经理 学校 考试 作业 妈妈 爸爸 孩子 觉得 特别 真的 好像 需要").split()
SHARED_FILLER = "他 她 看 人 山 水 心 中 上 来 去 了 有 不 和 很".split()


def synthetic_text(pool: list[str], characters: int, seed: int) -> str:
    """Sentences of 4–8 words, 40 % from the shared filler, until ``characters`` long; with newlines."""
    rng = random.Random(seed)
    sentences, size = [], 0
    while size < characters:
        words = [rng.choice(SHARED_FILLER if rng.random() < 0.4 else pool) for _ in range(rng.randint(4, 8))]
        sentences.append("".join(words) + rng.choice("，。\n"))
        size += len(sentences[-1])
    return "".join(sentences)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, str]:
    return {"style_train": synthetic_text(CLASSICAL, 20_000, seed=1),
            "other_train": synthetic_text(MODERN, 20_000, seed=2),
            "style_test": synthetic_text(CLASSICAL, 10_000, seed=3),
            "other_test": synthetic_text(MODERN, 10_000, seed=4)}


@pytest.fixture(scope="module")
def classifier(synthetic) -> StyleClassifier:
    return StyleClassifier.fit([synthetic["style_train"]], [synthetic["other_train"]])


# ---------------------------------------------------------------- chunking


def test_pools_are_disjoint():
    classical, modern, filler = (set("".join(pool)) for pool in (CLASSICAL, MODERN, SHARED_FILLER))
    assert not classical & modern and not filler & (classical | modern)


def test_chunks_have_equal_length_and_lose_only_the_remainder():
    texts = ["江湖 夜雨\n十年灯。" * 7, "短", "", "剑光一闪\u3000" * 3]
    chunks = chunk_texts(texts, length=6)
    assert all(len(chunk) == 6 for chunk in chunks)
    expected = []
    for text in texts:
        squeezed = "".join(text.split())
        expected.append(squeezed[: len(squeezed) - len(squeezed) % 6])
    assert "".join(chunks) == "".join(expected)
    assert len(chunks) == 9 + 0 + 0 + 2  # 56 characters -> 9 chunks (2 dropped), 1, 0, 12 -> 2


# ---------------------------------------------------------------- classifier


def test_synthetic_held_out_accuracy(classifier, synthetic):
    scores = classifier.accuracy([synthetic["style_test"]], [synthetic["other_test"]])
    assert scores["n_test"] == len(chunk_texts([synthetic["style_test"], synthetic["other_test"]]))
    assert scores["accuracy"] >= 0.9
    assert scores["style_recall"] >= 0.9 and scores["other_recall"] >= 0.9


def test_probability_orders_style_above_other(classifier, synthetic):
    style = classifier.predict_proba(chunk_texts([synthetic["style_test"]]))
    other = classifier.predict_proba(chunk_texts([synthetic["other_test"]]))
    assert style.dtype == np.float64 and ((style >= 0) & (style <= 1)).all()
    labels = np.r_[np.ones(style.size), np.zeros(other.size)]
    assert roc_auc_score(labels, np.r_[style, other]) >= 0.99
    assert style.mean() > 0.7 > 0.3 > other.mean()


def test_classes_are_balanced_and_seeded(synthetic):
    style = [synthetic["style_train"] * 3]
    other = [synthetic["other_train"]]
    first = StyleClassifier.fit(style, other, seed=5)
    assert first.n_train == 2 * len(chunk_texts(other))
    again = StyleClassifier.fit(style, other, seed=5)
    probe = chunk_texts([synthetic["style_test"]])[:20]
    np.testing.assert_array_equal(first.predict_proba(probe), again.predict_proba(probe))


def test_empty_text_scores_zero(classifier):
    probabilities = classifier.predict_proba(["", " \n\u3000", "且说侠客拔剑"])
    assert probabilities[0] == 0.0 and probabilities[1] == 0.0 and probabilities[2] > 0.5


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip(classifier, synthetic, tmp_path):
    path = tmp_path / "classifier.pkl"
    classifier.save(path)
    loaded = StyleClassifier.load(path)
    probe = chunk_texts([synthetic["style_test"], synthetic["other_test"]])
    np.testing.assert_array_equal(classifier.predict_proba(probe), loaded.predict_proba(probe))
    assert loaded.n_train == classifier.n_train
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.pkl"]  # no temporary file left behind


# ---------------------------------------------------------------- metric


def test_metric_is_the_mean_probability(classifier, synthetic):
    texts = chunk_texts([synthetic["style_test"]])[:7] + chunk_texts([synthetic["other_test"]])[:5]
    metric = StyleProbability(classifier)
    metric.update(texts[:4])
    metric.update(texts[4:11])
    metric.update(texts[11])  # a bare string is one text
    value = metric.compute()
    assert value.dtype == torch.float64 and value.shape == ()
    assert float(value) == pytest.approx(classifier.predict_proba(texts).mean(), abs=1e-12)


def test_metric_clone_shares_the_classifier(classifier):
    metric = StyleProbability(classifier)
    assert metric.clone().classifier is classifier


# ---------------------------------------------------------------- real text


def test_real_text_held_out_accuracy():
    from wuxia_lightning.sources import to_simplified_chinese

    style_path = require_shared(SHARED / "data" / "style" / "sanxia_wuyi.txt")
    other_path = require_shared(SHARED / "data" / "general" / "cmrc2018_wiki_contexts.txt")
    # Read a little more than needed (whitespace is removed); train on the first 60k characters, test on
    # the next 20k, so no test chunk overlaps a training one.
    style = "".join(to_simplified_chinese(style_path.read_text(encoding="utf-8")[:100_000]).split())
    other = "".join(other_path.read_text(encoding="utf-8")[:100_000].split())
    classifier = StyleClassifier.fit([style[:60_000]], [other[:60_000]])
    scores = classifier.accuracy([style[60_000:80_000]], [other[60_000:80_000]])
    print(f"real-text held-out scores: {scores}")
    assert scores["n_test"] == 400
    assert scores["accuracy"] >= 0.95
    assert scores["style_recall"] >= 0.9 and scores["other_recall"] >= 0.9


# ---------------------------------------------------------------- inside the package's style scores
def test_style_scorer_reports_p_style_only_with_general_text(synthetic, tmp_path):
    """Validation and predict score through StyleScorer: given general text it fits the classifier on the
    two corpora and adds p_style (batch mean and per sample) to the other scores."""
    from wuxia_lightning.evaluation import StyleScorer

    replies = [synthetic["style_test"][:300], synthetic["other_test"][:300], synthetic["style_test"][300:500]]
    plain = StyleScorer([synthetic["style_train"]], cache_dir=str(tmp_path))
    plain.update(replies)
    assert "p_style" not in plain.compute() and "p_style" not in plain.score_one(replies[0])

    scorer = StyleScorer([synthetic["style_train"]], cache_dir=str(tmp_path), other_texts=[synthetic["other_train"]])
    scorer.update(replies)
    reference = StyleClassifier.fit([synthetic["style_train"]], [synthetic["other_train"]]).predict_proba(replies)
    assert scorer.compute()["p_style"] == pytest.approx(float(np.mean(reference)), abs=1e-9)
    assert [scorer.score_one(r)["p_style"] for r in replies] == pytest.approx(list(reference), abs=1e-9)
    assert reference[0] > 0.5 > reference[1]  # the scores mean what they say
    scorer.reset()
    scorer.update(replies[:1])
    assert scorer.compute()["p_style"] == pytest.approx(reference[0], abs=1e-9)
