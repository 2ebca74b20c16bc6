"""What a batch may hold, named once: the keys the collator pads, the masking modes, the sample ids.

Data produces batches, objectives and Lightning modules consume them, callbacks (non-finite guard,
sample log) read the sample ids. All of them agree on these names through this module, which imports
nothing of the package.
"""

from __future__ import annotations

from enum import IntEnum

# Per-token sequences: padded on the right by the collator (input_ids with the pad id, labels with
# IGNORE_INDEX, loss weights with 0). ``attention_mask`` is made by the collator from the lengths.
SEQUENCE_KEYS = ("input_ids", "labels", "loss_weights")

# Keys under which a batch may carry its samples' identities (the samplers draw (epoch, index)).
SAMPLE_ID_KEYS = ("epoch", "index")


class MaskMode(IntEnum):
    """How a stage-1 window was masked; stored as its integer in batches (``batch["mode"]``)."""

    SPAN = 0            # random spans hidden, rebuilt by infilling
    FUNCTION_WORD = 1   # function words (虚词) hidden
    NONE = 2            # no mask: plain causal LM over the window

    @property
    def label(self) -> str:
        return self.name.lower()
