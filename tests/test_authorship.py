"""Author classifier and Burrows's Delta on the real novels: held-out chapters only, cached once."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import SHARED, require_shared

from wuxia_lightning.data.corpus import read_corpus, split_train_val
from wuxia_lightning.metrics.authorship import (
    GENERAL,
    AuthorshipModel,
    AuthorshipSettings,
    corpus_classes,
    corpus_files_key,
    load_author_texts,
    normalise,
    passages,
    resolve_author,
)

STYLE, GENERAL_DIR = SHARED / "data" / "style", SHARED / "data" / "general"
# A modest sample keeps the fit to ~15 s on one core; the full default (2,000 per class) scores 0.989.
TEST_SETTINGS = AuthorshipSettings(max_passages=300)
AUTHORS = {"general", "shi_gong_an_anon", "shi_naian", "shi_yukun", "tanmeng_daoren", "wen_kang"}


@pytest.fixture(scope="session")
def author_texts():
    return load_author_texts(require_shared(STYLE), require_shared(GENERAL_DIR))


@pytest.fixture(scope="session")
def authorship_model() -> AuthorshipModel:
    """Fitted once per session into the session's cache (conftest's WUXIA_CACHE); the CLI tests reuse it."""
    return AuthorshipModel.load_or_fit(str(require_shared(STYLE)), str(require_shared(GENERAL_DIR)), TEST_SETTINGS)


def test_one_class_per_author_plus_general(authorship_model):
    assert set(authorship_model.classes) == AUTHORS == set(corpus_classes(str(STYLE)))


def test_held_out_accuracy_on_real_chapters(authorship_model, author_texts):
    record = authorship_model.heldout
    print(f"held-out accuracy {record.accuracy:.3f} on {record.n_test} passages; by length "
          f"{record.accuracy_by_length}; confusion {record.confusion}")
    expected_n = len(passages(author_texts.heldout, TEST_SETTINGS.passage_length, None, 0)[0])
    assert record.n_test == expected_n == np.sum(record.confusion) and record.n_test > 1000
    assert record.accuracy >= 0.93  # measured 0.968 with 300 passages per class
    assert min(record.recall.values()) >= 0.85 and set(record.recall) == AUTHORS
    assert record.accuracy_by_length["100"] < record.accuracy_by_length["400"]  # longer passages: easier


def test_delta_nearest_author_of_held_out_text_is_that_author(authorship_model, author_texts):
    for label, texts in author_texts.heldout.items():
        distances = authorship_model.delta.distances("".join(texts))
        assert min(distances, key=distances.get) == label, (label, distances)
    assert authorship_model.heldout.delta_nearest == {label: label for label in AUTHORS}


def test_training_never_sees_a_held_out_chapter(author_texts):
    documents, _ = read_corpus(str(STYLE), to_simplified=True)
    _, heldout = split_train_val(documents, TEST_SETTINGS.val_fraction, seed=0)  # the data module's split
    held = {normalise(d.text) for d in heldout}
    assert held == {t for label, texts in author_texts.heldout.items() if label != GENERAL for t in texts}
    assert not held & {t for texts in author_texts.train.values() for t in texts}
    assert not set(author_texts.heldout[GENERAL]) & set(author_texts.train[GENERAL])


def test_the_classifier_is_cached_by_corpus_bytes_and_settings(authorship_model, tmp_path):
    started = time.perf_counter()
    again = AuthorshipModel.load_or_fit(str(STYLE), str(GENERAL_DIR), TEST_SETTINGS)
    assert time.perf_counter() - started < 5  # loaded, not refitted (a fit takes ~15 s)
    probe = ["且说那人拔剑而起，竟自去了。", "人工智能是计算机科学的一个分支。"]
    assert again.classifier.predict(probe) == authorship_model.classifier.predict(probe)
    copy = tmp_path / "style"
    shutil.copytree(STYLE, copy)
    key = corpus_files_key(str(copy), str(GENERAL_DIR), TEST_SETTINGS)
    assert key == corpus_files_key(str(STYLE), str(GENERAL_DIR), TEST_SETTINGS)  # bytes and names, not paths
    assert key != corpus_files_key(str(copy), str(GENERAL_DIR), replace(TEST_SETTINGS, seed=1))
    edited = copy / "shuihu_zhuan.txt"
    edited.write_text(edited.read_text(encoding="utf-8") + "話說。\n", encoding="utf-8")
    assert key != corpus_files_key(str(copy), str(GENERAL_DIR), TEST_SETTINGS)


def test_one_script_and_one_quotation_style():
    assert normalise("話說 「宋江」\n道：『來』") == normalise("话说“宋江”道：‘来’") == "话说“宋江”道：‘来’"


@pytest.mark.parametrize("name,expected", [("施耐庵", "shi_naian"), ("shi_naian", "shi_naian"),
                                           ("彭公案", "tanmeng_daoren"), ("xiao_wuyi", "shi_yukun"),
                                           ("金庸", None)])
def test_target_author_spellings(name, expected):
    assert resolve_author(name, sorted(AUTHORS)) == expected
