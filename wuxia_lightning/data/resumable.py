"""Training loaders that a killed run resumes mid-epoch: no sample served twice, none skipped.

Lightning saves ``state_dict()`` of every training loader that has one (``_Stateful``) into the
checkpoint (``loops.fit_loop.state_dict.combined_loader``) and hands it back to ``load_state_dict``
before the resumed epoch's iterator is created. A plain DataLoader has no state, so Lightning restarts
the interrupted epoch from its first batch.

The position is counted where batches leave the loader, not inside the sampler: with worker processes
the sampler runs ahead by ``prefetch_factor × num_workers`` batches, and those were never trained on.
The sampler then starts the resumed epoch at that position, so skipped samples are never loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """A DistributedSampler (seeded order per epoch, one shard per rank) that can start an epoch part-way.

    ``resume_at(epoch, position)`` makes the next iteration *of that epoch* begin at ``position`` in this
    rank's order; an iteration of any other epoch ignores and forgets it (a checkpoint written at the end
    of an epoch resumes with the next epoch, from its start).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume: tuple[int, int] | None = None
        self.iteration: tuple[int, int] | None = None  # (epoch, start position) of the latest iteration

    def resume_at(self, epoch: int, position: int) -> None:
        self._resume = (epoch, position)

    @property
    def pending_resume(self) -> tuple[int, int] | None:
        return self._resume

    def _positions(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = min(self._resume[1], len(indices))
        self._resume = None
        self.iteration = (self.epoch, start)
        return iter(indices[start:])

    def __iter__(self) -> Iterator[int]:
        return self._positions()


class EpochIndexSampler(ResumableSampler):
    """Yields (epoch, index), so each sample knows the epoch it is drawn for (its masking draw, its log).

    Lightning calls ``set_epoch`` on it every epoch and leaves an existing DistributedSampler in place.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self._positions()
        epoch = self.epoch
        return ((epoch, index) for index in indices)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict`` is {"epoch", "position"}: samples of this rank's epoch order that
    have left the loader. Needs a :class:`ResumableSampler` (``sampler=``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current: _CountingIterator | None = None

    def __iter__(self) -> Iterator:
        # Lazy: Lightning creates the resumed epoch's iterator before it calls ``set_epoch``; worker
        # iterators draw their first indices on creation, so creating it on the first ``next`` makes
        # the sampler see the right epoch (and the resume position) in every case.
        self._current = _CountingIterator(self)
        return self._current

    def _base_iter(self) -> Iterator:
        return super().__iter__()

    def _samples_per_batch(self) -> int:
        return self.batch_size or 1

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # replaced by Lightning (e.g. overfit_batches)
            return {}
        if sampler.pending_resume is not None:  # loaded but not started yet: still the same position
            epoch, position = sampler.pending_resume
            return {"epoch": epoch, "position": position}
        current = self._current
        if current is None or not current.started or sampler.iteration is None:
            return {"epoch": sampler.epoch, "position": 0}
        epoch, start = sampler.iteration
        position = min(start + current.batches * self._samples_per_batch(), sampler.num_samples)
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict:
            return
        if not isinstance(self.sampler, ResumableSampler):
            log.warning("the training sampler cannot resume part-way; the interrupted epoch restarts")
            return
        self.sampler.resume_at(int(state_dict["epoch"]), int(state_dict["position"]))


class _CountingIterator(Iterator):
    """Counts the batches handed out by one iteration of a :class:`ResumableDataLoader`."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.inner: Iterator | None = None
        self.batches = 0

    @property
    def started(self) -> bool:
        return self.inner is not None

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        if self.inner is None:
            self.inner = self.loader._base_iter()
        batch = next(self.inner)
        self.batches += 1
        return batch

    def __len__(self) -> int:
        return len(self.loader)


class TrainLoaderPositions:
    """The training loaders' positions, kept by a datamodule and saved through *its* state_dict.

    Lightning also stores stateful loaders' states in the fit loop, but (2.6) hands them back only when
    the loaders are first built after the loops were restored. ``trainer.estimated_stepping_batches``
    (our LR schedule's length, in ``configure_optimizers``) builds them earlier, so that state is never
    applied. A datamodule's state is restored before either, and reaches the loaders as they are built.
    """

    def __init__(self) -> None:
        self.loaders: dict[str, ResumableDataLoader] = {}
        self.pending: dict[str, dict[str, int]] = {}

    def track(self, name: str, loader: ResumableDataLoader) -> ResumableDataLoader:
        """Remember ``loader`` (built for training) and give it the position loaded for ``name``, if any."""
        if name in self.pending:
            loader.load_state_dict(self.pending.pop(name))
        self.loaders[name] = loader
        return loader

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {**self.pending, **{name: loader.state_dict() for name, loader in self.loaders.items()}}

    def load_state_dict(self, state_dict: dict[str, dict[str, int]]) -> None:
        self.pending = dict(state_dict)
        for name in list(self.pending):
            if name in self.loaders:
                self.loaders[name].load_state_dict(self.pending.pop(name))
