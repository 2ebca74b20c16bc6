"""Stage-1 data path: token cache, windows, document-level split, the DataModule."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, SAMPLE_TEXT

import wuxia_lightning.data.token_cache as token_cache
from wuxia_lightning.data.corpus import Document
from wuxia_lightning.data.style_datamodule import StyleDataModule
from wuxia_lightning.data.token_cache import IngestSettings, load_or_build, tokenize_document
from wuxia_lightning.data.windows import build_stream, cut_windows

SAMPLE_STYLE = REPO / "data" / "sample" / "style"


def test_cache_reload_equals_build_and_never_tokenizes(small_tokenizer, tmp_path, monkeypatch):
    source = tmp_path / "novel.txt"
    source.write_text(SAMPLE_TEXT * 5, encoding="gb18030")
    settings = IngestSettings(to_simplified=True)
    built, report, cached = load_or_build(source, small_tokenizer, settings, tmp_path)
    assert not cached and report.encoding == "gb18030"

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a cache hit must not read, segment or tokenize the corpus again")

    monkeypatch.setattr(token_cache, "tokenize_document", forbidden)
    monkeypatch.setattr(token_cache, "read_corpus", forbidden)
    loaded, report_again, cached = load_or_build(source, small_tokenizer, settings, tmp_path)
    assert cached and report_again == report
    assert len(loaded) == len(built)
    for a, b in zip(built, loaded, strict=True):
        assert a.document == b.document
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.function_word, b.function_word)
        assert np.array_equal(a.paragraph_starts, b.paragraph_starts)


def test_cache_key_follows_content_tokenizer_and_settings(small_tokenizer, qwen_tokenizer, tmp_path):
    source = tmp_path / "novel.txt"
    source.write_text(SAMPLE_TEXT, encoding="utf-8")
    fingerprint = token_cache.tokenizer_fingerprint(small_tokenizer)
    key = token_cache.cache_key(source, fingerprint, IngestSettings())
    assert key != token_cache.cache_key(source, fingerprint, IngestSettings(to_simplified=True))
    assert key != token_cache.cache_key(source, token_cache.tokenizer_fingerprint(qwen_tokenizer), IngestSettings())
    source.write_text(SAMPLE_TEXT + "又一段。", encoding="utf-8")
    assert key != token_cache.cache_key(source, fingerprint, IngestSettings())


def test_function_word_flags_align_with_characters(qwen_tokenizer):
    text = "剑光一闪，那人已然倒地。他便拔剑而起，却不知敌人早已离去。"
    doc = tokenize_document(qwen_tokenizer, Document("x.txt", 0, "x", text))
    flagged = qwen_tokenizer.decode(doc.ids[doc.function_word].tolist())
    for word in ("已然", "便", "却", "早已"):
        assert word in flagged
    assert "剑光" not in flagged and "敌人" not in flagged


def test_windows_cover_the_stream_and_cut_at_paragraphs(small_tokenizer):
    docs = [tokenize_document(small_tokenizer, Document("a.txt", i, "t", SAMPLE_TEXT * 2)) for i in range(3)]
    eos = small_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream = build_stream(docs, eos, length=48)
    lengths = stream.windows[:, 1] - stream.windows[:, 0]
    assert (lengths <= 48).all() and (lengths > 0).all()
    assert stream.windows[0, 0] == 0 and stream.windows[-1, 1] == len(stream.ids)
    assert (stream.windows[1:, 0] == stream.windows[:-1, 1]).all()
    assert int(stream.special.sum()) == 3 and (stream.ids[stream.special] == eos).all()
    boundaries = set(np.concatenate([d.paragraph_starts + sum(len(x.ids) + 1 for x in docs[:i])
                                     for i, d in enumerate(docs)]).tolist())
    assert np.mean([start in boundaries for start, _ in stream.windows]) > 0.5


def test_long_paragraph_is_cut_inside():
    assert cut_windows(np.array([0, 100]), 100, 30).tolist() == [[0, 30], [30, 60], [60, 90], [90, 100]]


@pytest.fixture(scope="module")
def datamodule(tiny_model_dir):
    data = StyleDataModule(corpus=str(SAMPLE_STYLE), max_length=96, batch_size=4, val_fraction=0.2,
                           model_name_or_path=str(tiny_model_dir))
    data.prepare_data()
    data.setup("fit")
    return data


def test_train_and_validation_share_no_document(datamodule):
    train = {(d.source, d.index) for d in datamodule.split_documents["train"]}
    val = {(d.source, d.index) for d in datamodule.split_documents["val"]}
    assert train and val and not train & val
    assert len(train) + len(val) == len(datamodule.split_documents["train"]) + len(datamodule.split_documents["val"])
    reports = {report.path.rsplit("/", 1)[-1]: report for report in datamodule.ingest_reports}
    assert reports["03_gb18030_xueye.txt"].encoding == "gb18030"
    assert reports["04_fanti_guyue.txt"].converted_t2s
    assert reports["05_duanchang_dao.txt"].removed["boilerplate"]["lines"] >= 2


def test_batches_fit_max_length_and_carry_modes(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 96
    assert batch["labels"].shape == batch["input_ids"].shape == batch["loss_weights"].shape
    assert set(batch["mode"].tolist()) <= {0, 1, 2}
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == -100).all()
