"""Resumable training loaders, atomic checkpoints, RNG states in checkpoints (in-process, fast)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from wuxia_lightning.callbacks.checkpointing import (
    AtomicCheckpointIO,
    IncompleteCheckpointError,
    checkpoint_is_intact,
)
from wuxia_lightning.callbacks.rng_state import capture_rng_states, restore_rng_states
from wuxia_lightning.data.resumable import EpochIndexSampler, ResumableDataLoader


class Keys(Dataset):
    """Returns its key: (epoch, index) from the sampler."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def make_loader(size: int = 23, batch_size: int = 4, num_workers: int = 0) -> ResumableDataLoader:
    dataset = Keys(size)
    sampler = EpochIndexSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=7)
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                               collate_fn=list)


def served(batches) -> list[tuple[int, int]]:
    return [tuple(key) for batch in batches for key in batch]


@pytest.mark.parametrize("num_workers", [0, 2], ids=["in-process", "two-workers"])
def test_a_loader_resumed_mid_epoch_serves_exactly_the_rest(num_workers):
    """Workers fetch ahead of the trainer: the saved position counts batches handed out, not drawn."""
    reference = make_loader()
    reference.sampler.set_epoch(3)
    full = served(reference)

    first = make_loader(num_workers=num_workers)
    first.sampler.set_epoch(3)
    iterator = iter(first)
    before = served(next(iterator) for _ in range(2))
    state = first.state_dict()
    assert state == {"epoch": 3, "position": 8}

    second = make_loader(num_workers=num_workers)  # a new process: fresh loader, state from the checkpoint
    second.load_state_dict(state)
    iterator = iter(second)  # Lightning iterates before set_epoch: the position must wait for the epoch
    second.sampler.set_epoch(3)
    after = served(iterator)
    assert before + after == full
    assert len(second) == len(reference)  # Lightning's batch count for the epoch stays whole
    assert second.state_dict() == {"epoch": 3, "position": 23}


def test_a_position_saved_twice_in_one_resumed_epoch_counts_from_the_epoch_start():
    first = make_loader()
    first.load_state_dict({"epoch": 1, "position": 8})
    first.sampler.set_epoch(1)
    iterator = iter(first)
    next(iterator)
    assert first.state_dict() == {"epoch": 1, "position": 12}


def test_a_state_saved_at_the_end_of_an_epoch_starts_the_next_epoch_from_its_beginning():
    loader = make_loader()
    loader.load_state_dict({"epoch": 0, "position": 23})
    loader.sampler.set_epoch(1)
    epoch_one = served(loader)
    assert len(epoch_one) == 23 and {epoch for epoch, _ in epoch_one} == {1}
    loader.sampler.set_epoch(2)  # the resume position is forgotten after one use
    assert len(served(loader)) == 23


def test_a_loaded_state_not_yet_used_is_saved_again_unchanged():
    loader = make_loader()
    loader.load_state_dict({"epoch": 2, "position": 4})
    assert loader.state_dict() == {"epoch": 2, "position": 4}


def test_samples_carry_their_epoch_and_index_into_the_batch():
    from wuxia_lightning.data.collate import collate_right_padded

    samples = [{"input_ids": np.array([1, 2]), "labels": np.array([1, 2]), "loss_weights": np.ones(2, np.float32),
                "mode": 0, "masked_tokens": 0, "shortfall_tokens": 0, "epoch": 4, "index": index}
               for index in (9, 3)]
    batch = collate_right_padded(samples, pad_id=0)
    assert batch["epoch"].tolist() == [4, 4] and batch["index"].tolist() == [9, 3]
    for sample in samples:
        del sample["epoch"]
    assert "epoch" not in collate_right_padded(samples, pad_id=0)


def test_collation_is_stage_neutral_and_refuses_mixed_samples():
    """A chat example carries no masking keys and the batch gets none; samples that disagree on their
    keys are a bug upstream, not something to paper over by dropping a key."""
    from wuxia_lightning.data.collate import collate_right_padded
    from wuxia_lightning.tokens import IGNORE_INDEX

    chat = [{"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, 6, 7]), "epoch": 0, "index": 1},
            {"input_ids": np.array([8]), "labels": np.array([8]), "epoch": 0, "index": 2}]
    batch = collate_right_padded(chat, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "epoch", "index"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    del chat[1]["index"]
    with pytest.raises(ValueError, match="different keys"):
        collate_right_padded(chat, pad_id=0)


# ---- checkpoint files -----------------------------------------------------------------------------

def write_checkpoint(path, step: int) -> None:
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "weights": torch.arange(5000.0) + step}, path)


def test_a_checkpoint_is_written_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    write_checkpoint(path, 1)
    write_checkpoint(path, 2)  # replacing an existing one
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert checkpoint_is_intact(path)
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 2


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    older, last = tmp_path / "epoch=0-step=2.ckpt", tmp_path / "last.ckpt"
    write_checkpoint(older, 2)
    write_checkpoint(last, 4)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # what a kill during a copy leaves
    assert not checkpoint_is_intact(last)
    with caplog.at_level(logging.WARNING):
        loaded = AtomicCheckpointIO().load_checkpoint(last)
    assert loaded["global_step"] == 2
    assert "last.ckpt is incomplete or corrupt" in caplog.text and "epoch=0-step=2.ckpt" in caplog.text


def test_a_truncated_checkpoint_without_an_intact_neighbour_is_one_clear_error(tmp_path):
    last = tmp_path / "last.ckpt"
    write_checkpoint(last, 4)
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(IncompleteCheckpointError, match="last.ckpt: checkpoint is incomplete or corrupt"):
        AtomicCheckpointIO().load_checkpoint(last)


def test_rng_states_survive_a_checkpoint_loaded_with_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save({"rng": capture_rng_states()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    restore_rng_states(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1])
    assert drawn[2] == expected[2]


def test_positions_loaded_through_the_datamodule_reach_loaders_built_before_or_after():
    """Lightning restores a datamodule's state before it builds the training loaders (and, when the LR
    schedule asks for ``estimated_stepping_batches``, it never hands the loaders their own state)."""
    from wuxia_lightning.data.resumable import TrainLoaderPositions

    saved = TrainLoaderPositions()
    first = saved.track("train", make_loader())
    first.sampler.set_epoch(1)
    iterator = iter(first)
    next(iterator), next(iterator), next(iterator)
    state = saved.state_dict()
    assert state == {"train": {"epoch": 1, "position": 12}}

    for build_first in (False, True):
        positions = TrainLoaderPositions()
        loader = positions.track("train", make_loader()) if build_first else None
        positions.load_state_dict(state)
        loader = loader or positions.track("train", make_loader())
        loader.sampler.set_epoch(1)
        assert len(served(loader)) == 23 - 12
        assert positions.state_dict() == {"train": {"epoch": 1, "position": 23}}


def test_stage2_dialogues_name_their_epoch_and_index():
    from wuxia_lightning.data.chat_encoding import EncodedDialogue
    from wuxia_lightning.data.instruct_datamodule import EncodedDialogues

    example = EncodedDialogue(input_ids=[1, 2], labels=[1, 2], truncated=False)
    dialogues = EncodedDialogues([example, example])
    assert (dialogues[(3, 1)]["epoch"], dialogues[(3, 1)]["index"]) == (3, 1)
    assert (dialogues[1]["epoch"], dialogues[1]["index"]) == (0, 1)


def test_the_atomic_writer_replaces_only_lightnings_default(tmp_path):
    import lightning as L
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from wuxia_lightning.callbacks.checkpointing import AtomicCheckpoints

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    AtomicCheckpoints().setup(trainer, None, "fit")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    class Chosen(TorchCheckpointIO):
        pass

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, plugins=[Chosen()])
    AtomicCheckpoints().setup(trainer, None, "fit")
    assert type(trainer.strategy.checkpoint_io) is Chosen


def test_a_save_removes_temporaries_a_killed_run_left_and_only_those(tmp_path):
    import os
    import time

    stale = tmp_path / ".last.ab12cd.ckpt"  # what a SIGKILL during torch.save leaves
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    other = tmp_path / ".epoch=1.zz99.ckpt"  # another checkpoint's temporary: not ours to judge
    other.write_bytes(b"x")
    write_checkpoint(tmp_path / "last.ckpt", step=3)
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".epoch=1.zz99.ckpt", "last.ckpt"]
