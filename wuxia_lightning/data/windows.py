"""Cut tokenized documents into training windows of at most ``length`` tokens.

Documents are laid end to end, each followed by EOS (packing), and cut at paragraph starts where
possible so windows rarely begin mid-sentence; a paragraph longer than a window is cut inside.
Windows are (start, end) ranges into one token stream, so they cost two integers each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wuxia_lightning.data.token_cache import TokenizedDocument


@dataclass
class TokenStream:
    ids: np.ndarray            # int32, documents joined with EOS
    function_word: np.ndarray  # bool per token
    special: np.ndarray        # bool per token: EOS separators, never masked
    windows: np.ndarray        # int64 (n, 2) start/end

    def __len__(self) -> int:
        return len(self.windows)

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, end = self.windows[index]
        return self.ids[start:end], self.function_word[start:end], self.special[start:end]


def build_stream(documents: Sequence[TokenizedDocument], eos_id: int, length: int) -> TokenStream:
    """Join documents with EOS and cut the result into windows at paragraph boundaries."""
    if length < 2:
        raise ValueError(f"window length must be at least 2 tokens, got {length}")
    ids, flags, special, cuts, offset = [], [], [], [], 0
    for doc in documents:
        ids += [doc.ids, np.array([eos_id], dtype=np.int32)]
        flags += [doc.function_word, np.zeros(1, dtype=bool)]
        special += [np.zeros(len(doc.ids), dtype=bool), np.ones(1, dtype=bool)]
        cuts.append(doc.paragraph_starts + offset)
        offset += len(doc.ids) + 1
    boundaries = np.unique(np.concatenate(cuts + [np.array([offset])])) if documents else np.array([0])
    stream_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return TokenStream(stream_ids, np.concatenate(flags) if flags else np.zeros(0, dtype=bool),
                       np.concatenate(special) if special else np.zeros(0, dtype=bool),
                       cut_windows(boundaries, offset, length))


def cut_windows(boundaries: np.ndarray, total: int, length: int) -> np.ndarray:
    """Greedy: each window ends at the last boundary that fits, or after ``length`` tokens if none does."""
    windows, start = [], 0
    while start < total:
        limit = start + length
        last_fit = boundaries[np.searchsorted(boundaries, limit, side="right") - 1]
        end = int(last_fit) if last_fit > start else min(limit, total)
        windows.append((start, end))
        start = end
    return np.array(windows, dtype=np.int64).reshape(-1, 2)
