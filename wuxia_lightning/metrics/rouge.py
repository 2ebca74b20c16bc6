"""Character-level ROUGE-L F1: does a reply still answer the instruction (overlap with the reference)?

Chinese has no spaces, so word-level ROUGE on raw text scores whole sentences as single tokens; longest
common subsequence over characters is the usual choice for Chinese answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _lcs_length(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if char == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def char_rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over characters, whitespace ignored; 0.0 when either side is empty."""
    prediction, reference = "".join(prediction.split()), "".join(reference.split())
    if not prediction or not reference:
        return 0.0
    lcs = _lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


class CharRougeL(Metric):
    """Mean character ROUGE-L F1 over (prediction, reference) pairs."""

    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        self.total += sum(char_rouge_l(p, r) for p, r in zip(predictions, references, strict=True))
        self.count += len(predictions)

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)
