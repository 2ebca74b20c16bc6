"""Stable 64-bit hashes of character and word n-grams, vectorised with numpy.

Python's ``hash()`` is salted per process, so it can neither be cached on disk nor compared across DDP
ranks; everything here is a pure function of the text. The n-gram hash is a chained splitmix64:
``h1 = mix(code + SEED)`` and ``h_n[i] = mix(h_{n-1}[i] * P + code[i + n - 1])``, so all orders come from
one pass each and the 1-gram hash is a bijection of the code (no collisions between distinct characters).
With ~10^7 n-grams in an index, the chance that a given unseen n-gram falsely matches is ~10^7 / 2^64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_SEED = np.uint64(0x243F6A8885A308D3)  # digits of pi: any fixed constant works
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier (golden ratio), invertible mod 2^64
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection on uint64 that spreads every input bit over the output."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def chained_ngram_hashes(codes: np.ndarray, max_n: int) -> list[np.ndarray]:
    """Hashes of all n-grams of ``codes`` for n = 1..max_n; element ``n - 1`` has ``len(codes) - n + 1`` items."""
    codes = np.asarray(codes, dtype=np.uint64)
    out = [_mix64(codes + _SEED)]
    for n in range(2, max_n + 1):
        if codes.size < n:
            out.append(np.empty(0, dtype=np.uint64))
            continue
        out.append(_mix64(out[-1][: codes.size - n + 1] * _P + codes[n - 1 :]))
    return out


def char_codes(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint64 (utf-32 decoding is one C call, no Python loop)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


@lru_cache(maxsize=1 << 20)
def word_id(word: str) -> int:
    """Stable 64-bit id of a word (blake2b), memoised: corpora repeat a few 10^4 distinct words."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def word_codes(words: Sequence[str]) -> np.ndarray:
    """Word ids of a segmented text, ready for :func:`chained_ngram_hashes`."""
    return np.fromiter((word_id(w) for w in words), dtype=np.uint64, count=len(words))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. ``np.unique`` on uint64 measured ~50x slower than sort + mask here
    (numpy 2.4: 4.4 s against 0.09 s for 5.4M values), and the index build sorts ~10^7 hashes."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
