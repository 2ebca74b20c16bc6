"""Stage-2 stopping: does a reply end with ``<|im_end|>`` in time, and does it go on to write more turns?

The most reported failure after chat SFT is a model that never emits ``<|im_end|>`` (it was not in the
loss mask) or that emits it and then writes the user's next turn itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

# A ChatML role header that survived decoding with skip_special_tokens=True ("…\nuser\n…").
_ROLE_HEADER = re.compile(r"(?:^|\n)(?:system|user|assistant|human)[ \t]*\n", re.IGNORECASE)


def text_continues_dialogue(text: str) -> bool:
    """True when decoded text contains ``<|im_start|>`` or a bare role header line such as ``user``."""
    return "<|im_start|>" in text or bool(_ROLE_HEADER.search(text))


def classify_generation(token_ids: Sequence[int], stop_ids: Collection[int], im_start_id: int | None,
                        max_new_tokens: int) -> tuple[bool, bool]:
    """``(stopped, continued_dialogue)`` for the new tokens of one reply.

    stopped: a stop id (``<|im_end|>``, eos) occurs within the first ``max_new_tokens`` tokens.
    continued_dialogue: ``im_start_id`` occurs anywhere, or a token that is not a stop id follows the
    first stop (the model wrote past its own end). Pass the pad id among ``stop_ids`` when the ids are
    padded (Qwen pads with ``<|endoftext|>``, which is also an eos).
    """
    ids = list(token_ids)
    first_stop = next((i for i, tok in enumerate(ids) if tok in stop_ids), None)
    stopped = first_stop is not None and first_stop < max_new_tokens
    continued = im_start_id is not None and im_start_id in ids
    if first_stop is not None:
        continued = continued or any(tok not in stop_ids for tok in ids[first_stop + 1 :])
    return stopped, continued


class StopRate(Metric):
    """``compute()`` → ``{"stop_rate", "continues_dialogue_rate"}`` (float64; NaN before any reply).

    ``higher_is_better`` refers to stop_rate; continues_dialogue_rate should be near 0.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("stopped", "continued", "replies"):
            self.add_state(name, default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, stopped: Tensor, continued_dialogue: Tensor) -> None:
        stopped = torch.as_tensor(stopped, dtype=torch.bool).flatten()
        continued = torch.as_tensor(continued_dialogue, dtype=torch.bool).flatten()
        if stopped.shape != continued.shape:
            raise ValueError(f"stopped and continued_dialogue differ in size: {stopped.numel()} vs "
                             f"{continued.numel()}")
        self.stopped += int(stopped.sum())
        self.continued += int(continued.sum())
        self.replies += stopped.numel()

    def compute(self) -> dict[str, Tensor]:
        replies = self.replies.double()
        return {"stop_rate": self.stopped.double() / replies,
                "continues_dialogue_rate": self.continued.double() / replies}
