"""Checkpoints that a kill cannot leave half-written, and a clear answer when one is found anyway.

Lightning's ``TorchCheckpointIO`` (2.6) serialises into memory, writes that to a temporary file in the
*system* temp folder and ``shutil.move``s it over the target. When the temp folder is on another file
system than the checkpoint folder (tmpfs, a scratch disk, NFS), the move is a plain copy into the final
path: a kill during it leaves a truncated ``last.ckpt`` and a stray temp file. Nothing is fsync'ed.
Here the temporary file sits beside the target, is fsync'ed, then renamed: the rename is atomic, so the
path holds the old checkpoint or the new one, never part of one.

A checkpoint that is cut short anyway (an older run, a copy, a full disk) is recognised on loading;
the newest intact checkpoint in the same folder is used instead, with a warning naming both files.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import atomic_write

log = logging.getLogger(__name__)


class IncompleteCheckpointError(UserInputError):
    """A checkpoint file is truncated or corrupt, and no intact one lies beside it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, durable local writes and a fallback for incomplete files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return

        def write(temporary: Path) -> None:
            with temporary.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes are on disk before the rename makes them visible

        target = Path(path)
        started = time.time()
        atomic_write(target, write)
        _fsync_directory(target.parent)  # …and the rename itself survives a crash
        remove_leftover_temporaries(target, older_than=started)

    def load_checkpoint(self, path: _PATH, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if _is_local(path) and Path(path).is_file() and not checkpoint_is_intact(Path(path)):
            path = intact_replacement(Path(path))
        return super().load_checkpoint(path, *args, **kwargs)


def remove_leftover_temporaries(target: Path, older_than: float) -> None:
    """Delete half-written temporaries of ``target`` (``.last.x1y2.ckpt``) that a killed run left behind.
    Only files older than this save: a temporary another live writer is filling now is never touched."""
    stale = [p for p in target.parent.glob(f".{target.stem}.*{target.suffix}")
             if p.is_file() and p.stat().st_mtime < older_than]
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary checkpoint file(s) a killed run left in %s", len(stale), target.parent)


def checkpoint_is_intact(path: Path) -> bool:
    """True when ``path`` is a complete torch zip archive (every member present, CRCs correct).

    ``torch.save`` writes a zip file whose directory is at the very end, so a file cut short at any
    point has no readable directory; the CRC check also catches damage in the middle."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def intact_replacement(path: Path) -> Path:
    """The newest intact ``*.ckpt`` beside the incomplete ``path``, or a clear error if there is none."""
    candidates = sorted((p for p in path.parent.glob("*.ckpt")  # not our hidden temporary files
                         if p != path and p.is_file() and not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    replacement = next((p for p in candidates if checkpoint_is_intact(p)), None)
    if replacement is None:
        raise IncompleteCheckpointError(
            "checkpoint is incomplete or corrupt (cut short while being written: a kill, a full disk?) and"
            " no intact checkpoint lies beside it; pass an earlier checkpoint with --ckpt_path, or start"
            " afresh without it", path=str(path))
    log.warning("checkpoint %s is incomplete or corrupt (cut short while being written?); resuming from %s,"
                " the newest intact checkpoint beside it", path, replacement)
    return replacement


class AtomicCheckpoints(L.Callback):
    """Installs :class:`AtomicCheckpointIO` in place of Lightning's default ``TorchCheckpointIO``.

    A callback (from ``configure_callbacks``) so that every config gets it without a ``trainer.plugins``
    entry; ``setup`` runs before the checkpoint of ``--ckpt_path`` is read. A checkpoint plugin chosen
    on purpose (any other class, or the sharded strategies' own writers) is left alone."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path)  # remote URLs (s3://, gs://…) keep Lightning's own writer


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms / file systems cannot open folders: the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
