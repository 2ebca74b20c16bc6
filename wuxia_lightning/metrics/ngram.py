"""N-gram overlap of generated text with the source corpus.

The corpus side is a :class:`CorpusNgramIndex`: sorted unique uint64 hashes of every character n-gram
(n = 2..4) and jieba word n-gram (n = 1..2), built once per corpus and cached on disk under a key derived
from the corpus content. 13 MB of novels give ~10^7 hashes (~80 MB), against several GB for Python sets.

Boundaries: n-grams never span two texts (documents) but do run across newlines inside a text; newlines
are ordinary characters (and jieba tokens). Generated text is treated the same way, so both sides agree.
No script conversion happens here: index and generations must use the same script (Traditional or
Simplified), which is the caller's job.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from wuxia_lightning.metrics._cache import atomic_write, content_key, default_cache_dir
from wuxia_lightning.metrics._hashing import chained_ngram_hashes, char_codes, sorted_unique, word_codes

log = logging.getLogger(__name__)

CHAR_NS: tuple[int, ...] = (2, 3, 4)
WORD_NS: tuple[int, ...] = (1, 2)
KINDS: tuple[str, ...] = tuple(f"char{n}" for n in CHAR_NS) + tuple(f"word{n}" for n in WORD_NS)
# Bump when hashing or segmentation changes: it is part of the cache key, so old files are ignored.
INDEX_VERSION = 1


def segment(text: str) -> list[str]:
    """jieba words without the HMM (10x faster; the n-gram index only needs a consistent segmentation)."""
    import jieba  # local import: jieba loads its dictionary lazily and logs on first use

    return jieba.lcut(text, HMM=False)


def text_ngram_hashes(text: str) -> dict[str, np.ndarray]:
    """Hashes of every n-gram occurrence of one text, per kind (duplicates kept: they are occurrences)."""
    chars = chained_ngram_hashes(char_codes(text), max(CHAR_NS))
    words = chained_ngram_hashes(word_codes(segment(text)), max(WORD_NS))
    out = {f"char{n}": chars[n - 1] for n in CHAR_NS}
    out.update({f"word{n}": words[n - 1] for n in WORD_NS})
    return out


def _index_settings() -> dict[str, object]:
    import jieba

    # The jieba version and dictionary decide word boundaries, so they belong in the key.
    return {"version": INDEX_VERSION, "char_ns": CHAR_NS, "word_ns": WORD_NS, "hmm": False,
            "jieba": jieba.__version__, "jieba_dict": str(jieba.dt.dictionary)}


class CorpusNgramIndex:
    """Immutable set of a corpus's n-gram hashes, one sorted uint64 array per kind in :data:`KINDS`."""

    def __init__(self, tables: dict[str, np.ndarray], key: str = "", path: Path | None = None) -> None:
        missing = set(KINDS) - set(tables)
        if missing:
            raise ValueError(f"n-gram index is missing kinds {sorted(missing)}")
        self.tables = {kind: np.ascontiguousarray(tables[kind], dtype=np.uint64) for kind in KINDS}
        self.key, self.path = key, path

    @classmethod
    def build(cls, texts: Sequence[str], cache_dir: str | Path | None = None) -> CorpusNgramIndex:
        """Load the index of ``texts`` from the cache, or build and cache it (one ``.npz`` per corpus)."""
        if isinstance(texts, str):
            texts = [texts]
        key = content_key(texts, _index_settings())
        path = Path(cache_dir if cache_dir is not None else default_cache_dir("ngram")).expanduser()
        path = path / f"ngram-{key[:32]}.npz"
        if path.exists():
            try:
                return cls.load(path, key)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # truncated or foreign file: rebuild it
                log.warning("ignoring unreadable n-gram cache %s (%s)", path, err)
        index = cls(_build_tables(texts), key, path)
        atomic_write(path, index._save)
        return index

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> CorpusNgramIndex:
        """Read an index written by :meth:`build`; ``key`` (if given) must match the stored one."""
        with np.load(path, allow_pickle=False) as data:
            stored_key = str(data["key"])
            if key is not None and stored_key != key:
                raise ValueError(f"cache key mismatch in {path}")
            return cls({kind: data[kind] for kind in KINDS}, stored_key, Path(path))

    def _save(self, path: Path) -> None:
        np.savez(path, key=np.array(self.key), **self.tables)  # uncompressed: loads in ~0.1 s

    def contains(self, kind: str, hashes: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``hashes`` (uint64, from :func:`text_ngram_hashes`) are in the corpus."""
        table = self.tables[kind]
        hashes = np.asarray(hashes, dtype=np.uint64)
        if table.size == 0:
            return np.zeros(hashes.shape, dtype=bool)
        pos = np.searchsorted(table, hashes).clip(max=table.size - 1)
        return table[pos] == hashes

    def sizes(self) -> dict[str, int]:
        return {kind: int(table.size) for kind, table in self.tables.items()}

    @property
    def nbytes(self) -> int:
        return sum(table.nbytes for table in self.tables.values())

    def __deepcopy__(self, memo: dict) -> CorpusNgramIndex:
        return self  # immutable: Metric.clone() must not copy ~50 MB per metric


def _build_tables(texts: Sequence[str]) -> dict[str, np.ndarray]:
    # One sort per kind at the end rather than per text as well; peak memory is
    # ~8 bytes per character per kind, 35 MB for a 13 MB corpus.
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    for text in texts:
        for kind, hashes in text_ngram_hashes(text).items():
            parts[kind].append(hashes)
    return {kind: sorted_unique(np.concatenate(arrays)) if arrays else np.empty(0, np.uint64)
            for kind, arrays in parts.items()}


class NgramOverlap(Metric):
    """Fraction of generated n-gram occurrences that occur in the corpus, per kind in :data:`KINDS`.

    ``compute()`` returns ``{"char2": r, "char3": r, "char4": r, "word1": r, "word2": r}`` (float64; NaN
    for a kind with no n-grams yet). Higher means closer phrasing; 1.0 on everything means copying.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, index: CorpusNgramIndex, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.add_state("matched", default=torch.zeros(len(KINDS), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(KINDS), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, texts: str | Sequence[str]) -> None:
        if isinstance(texts, str):
            texts = [texts]
        matched = np.zeros(len(KINDS), dtype=np.int64)
        total = np.zeros(len(KINDS), dtype=np.int64)
        for text in texts:
            hashes = text_ngram_hashes(text)
            for i, kind in enumerate(KINDS):
                matched[i] += int(self.index.contains(kind, hashes[kind]).sum())
                total[i] += hashes[kind].size
        self.matched += torch.from_numpy(matched).to(self.matched.device)
        self.total += torch.from_numpy(total).to(self.total.device)

    def compute(self) -> dict[str, Tensor]:
        ratio = self.matched.double() / self.total.double()  # 0/0 -> NaN: "no data" stays visible
        return {kind: ratio[i] for i, kind in enumerate(KINDS)}
