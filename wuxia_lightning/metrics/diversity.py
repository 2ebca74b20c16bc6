"""Distinct-n: unique / total character n-grams over all generations of all ranks (low = repetitive)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from wuxia_lightning.metrics._hashing import chained_ngram_hashes, char_codes, sorted_unique


class DistinctN(Metric):
    """``compute()`` → ``{"distinct_1": r, ...}`` for each n in ``n_values`` (float64; NaN before data).

    The union must be exact across ranks (an n-gram seen on two ranks counts once), so the unique n-gram
    hashes are ``cat`` list states, deduplicated per update to keep them small; totals are summed.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, n_values: Sequence[int] = (1, 2, 3, 4), **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.n_values = tuple(sorted({int(n) for n in n_values}))
        if not self.n_values or self.n_values[0] < 1:
            raise ValueError(f"n_values must be positive integers, got {n_values!r}")
        for n in self.n_values:
            self.add_state(f"ids_{n}", default=[], dist_reduce_fx="cat")
        self.add_state("total", default=torch.zeros(len(self.n_values), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, texts: str | Sequence[str]) -> None:
        if isinstance(texts, str):
            texts = [texts]
        per_n: dict[int, list[np.ndarray]] = {n: [] for n in self.n_values}
        for text in texts:
            hashes = chained_ngram_hashes(char_codes(text), self.n_values[-1])
            for n in self.n_values:
                per_n[n].append(hashes[n - 1])
        for i, n in enumerate(self.n_values):
            ids = np.concatenate(per_n[n]) if per_n[n] else np.empty(0, np.uint64)
            self.total[i] += ids.size
            # torch has no full uint64 support: reinterpret the bits as int64 (equality is unchanged).
            unique = torch.from_numpy(sorted_unique(ids).view(np.int64)).to(self.total.device)
            getattr(self, f"ids_{n}").append(unique)

    def _sync_dist(self, dist_sync_fn: object = gather_all_tensors, process_group: object | None = None) -> None:
        # torchmetrics pads an empty list state with a float32 tensor (the metric dtype); a rank that saw
        # no text would then all_gather float32 against int64. Give it an empty int64 tensor instead.
        # (sync() has already cached the real states, so unsync() restores the empty list.)
        for n in self.n_values:
            if not getattr(self, f"ids_{n}"):
                setattr(self, f"ids_{n}", [torch.empty(0, dtype=torch.int64, device=self.total.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def compute(self) -> dict[str, Tensor]:
        result = {}
        for i, n in enumerate(self.n_values):
            state = getattr(self, f"ids_{n}")
            ids = dim_zero_cat(state) if len(state) else torch.empty(0, dtype=torch.int64)
            unique = torch.unique(ids).numel()
            result[f"distinct_{n}"] = torch.tensor(unique, dtype=torch.float64) / self.total[i].double()
        return result
