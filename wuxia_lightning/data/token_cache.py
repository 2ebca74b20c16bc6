"""Tokenize cleaned documents once and cache them on disk, with what masking needs precomputed.

Per file we store the token ids of every document, a per-token "function word" flag (from jieba POS
on the text, aligned to tokens through character offsets) and the token index where each paragraph
starts. Masking then only reads arrays; jieba and the tokenizer never run per draw.
The cache key covers the file's bytes, the tokenizer and every setting that changes the tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wuxia_lightning.data.corpus import Document, FileReport, read_corpus
from wuxia_lightning.data.function_words import function_word_spans
from wuxia_lightning.io import atomic_write, strict_json

CACHE_VERSION = "2"  # 2: lines holding literal model control tokens are dropped


@dataclass
class TokenizedDocument:
    document: Document            # identity (source, index, title); text is not kept in memory
    ids: np.ndarray               # int32 token ids
    function_word: np.ndarray     # bool, token overlaps a function word
    paragraph_starts: np.ndarray  # int64 token indices where a paragraph begins (0 included)


@dataclass(frozen=True)
class IngestSettings:
    to_simplified: bool = False
    drop_modern: bool = False
    modern_words: tuple[str, ...] | None = None

    def key(self) -> str:
        return json.dumps([self.to_simplified, self.drop_modern, self.modern_words], ensure_ascii=False)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(path: Path, fingerprint: str, settings: IngestSettings) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"{CACHE_VERSION}|{fingerprint}|{settings.key()}".encode())
    return digest.hexdigest()[:24]


def tokenize_document(tokenizer, document: Document) -> TokenizedDocument:
    """Token ids, function-word flags and paragraph starts of one cleaned document."""
    text = document.text
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)
    function_chars = np.zeros(len(text) + 1, dtype=np.int64)
    for begin, end, _ in function_word_spans(text):
        function_chars[begin:end] = 1
    covered = np.concatenate([[0], np.cumsum(function_chars)])
    flags = (covered[np.minimum(ends, len(text))] - covered[starts]) > 0
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    newline_ends = np.flatnonzero(code_points == ord("\n")) + 1
    paragraph_starts = np.unique(np.concatenate([[0], np.searchsorted(starts, newline_ends)]))
    paragraph_starts = paragraph_starts[paragraph_starts < len(ids)]
    return TokenizedDocument(_identity(document), ids, flags, paragraph_starts.astype(np.int64))


def load_or_build(path: Path, tokenizer, settings: IngestSettings, cache_dir: Path,
                  fingerprint: str | None = None) -> tuple[list[TokenizedDocument], FileReport, bool]:
    """Documents of one file from the cache, or built and cached now. Returns (docs, report, was_cached)."""
    fingerprint = fingerprint or tokenizer_fingerprint(tokenizer)
    stem = cache_dir / cache_key(path, fingerprint, settings)
    if stem.with_suffix(".npz").exists() and stem.with_suffix(".json").exists():
        return (*_read_cache(stem), True)
    documents, report = read_corpus(str(path), to_simplified=settings.to_simplified,
                                    drop_modern=settings.drop_modern, modern_words=settings.modern_words)
    tokenized = [tokenize_document(tokenizer, doc) for doc in documents]
    _write_cache(stem, tokenized, report.files[0])
    return tokenized, report.files[0], False


def load_or_build_many(paths: list[Path], tokenizer, settings: IngestSettings, cache_dir: Path,
                       workers: int | None = None) -> tuple[list[TokenizedDocument], list[FileReport]]:
    """All files, building missing caches in parallel processes (jieba POS is the slow part)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = tokenizer_fingerprint(tokenizer)
    workers = min(workers or os.cpu_count() or 1, len(paths))
    jobs = [(path, tokenizer, settings, cache_dir, fingerprint) for path in paths]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_load_or_build_job, jobs))
    else:
        results = [_load_or_build_job(job) for job in jobs]
    documents = [doc for docs, _, _ in results for doc in docs]
    return documents, [report for _, report, _ in results]


def _load_or_build_job(job: tuple) -> tuple[list[TokenizedDocument], FileReport, bool]:
    return load_or_build(*job)


def _identity(document: Document) -> Document:
    return Document(source=document.source, index=document.index, title=document.title, text="")


def _write_cache(stem: Path, documents: list[TokenizedDocument], report: FileReport) -> None:
    """Arrays in .npz, identities and the ingest report in .json; each written atomically."""
    lengths = np.array([len(doc.ids) for doc in documents], dtype=np.int64)
    paragraph_counts = np.array([len(doc.paragraph_starts) for doc in documents], dtype=np.int64)
    arrays = {
        "ids": _concat([doc.ids for doc in documents], np.int32),
        "function_word": _concat([doc.function_word for doc in documents], bool),
        "paragraph_starts": _concat([doc.paragraph_starts for doc in documents], np.int64),
        "lengths": lengths, "paragraph_counts": paragraph_counts,
    }
    meta = {"documents": [{"source": d.document.source, "index": d.document.index, "title": d.document.title}
                          for d in documents], "report": report.__dict__}
    atomic_write(stem.with_suffix(".npz"), lambda path: np.savez(path, **arrays))
    atomic_write(stem.with_suffix(".json"),
                 lambda path: path.write_text(strict_json(meta), encoding="utf-8"))


def _read_cache(stem: Path) -> tuple[list[TokenizedDocument], FileReport]:
    meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    with np.load(stem.with_suffix(".npz")) as arrays:
        ids, flags, paragraphs = arrays["ids"], arrays["function_word"], arrays["paragraph_starts"]
        token_bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
        paragraph_bounds = np.concatenate([[0], np.cumsum(arrays["paragraph_counts"])])
    documents = [
        TokenizedDocument(Document(text="", **identity), ids[token_bounds[i]:token_bounds[i + 1]],
                          flags[token_bounds[i]:token_bounds[i + 1]],
                          paragraphs[paragraph_bounds[i]:paragraph_bounds[i + 1]])
        for i, identity in enumerate(meta["documents"])
    ]
    return documents, FileReport(**meta["report"])


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
