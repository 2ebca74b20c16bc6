"""One output folder, one writer: a lock file naming the process (pid, host) that writes the folder.

Two runs writing the same adapter folder would replace each other's adapters at every checkpoint and
leave a folder that matches neither run. The lock is taken when fit is set up (rank 0 only: the other ranks
never write the folder) and released when fit ends or fails. A lock whose owner is gone (a killed job)
is taken over with a logged message; a lock held by a live process, or by any process on another host
(whose liveness we cannot check), stops the new run with a :class:`UserInputError`.

The lock file sits *beside* the folder (``<parent>/.<name>.lock``), not inside it: every checkpoint
replaces the whole adapter folder atomically (``staged_directory``), which would delete a lock kept in it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import lightning as L

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import strict_json

log = logging.getLogger(__name__)


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without signalling)."""
    if pid <= 0:  # os.kill(0 or negative) addresses process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> dict | None:
    """The lock's JSON, or None if the file is gone or unreadable."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


class OutputLock:
    """The lock of one output folder. ``acquire`` raises :class:`UserInputError` if another live process
    holds it; ``release`` removes it only while it is still ours."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed, or one that vanished between two looks: try again
            if self._create():
                self.held = True
                return
            current = read_owner(self.path)
            if current is None and not self.path.exists():
                continue
            if current is not None and not self._stale(current):
                raise UserInputError(
                    f"output folder is being written by another run (pid {current.get('pid')} on host "
                    f"{current.get('host')}, since {current.get('started')}); wait for it to finish, choose "
                    f"another --model.output_dir, or delete {self.path} if that run is gone",
                    path=str(self.folder))
            log.warning("taking over the stale lock %s of %s (%s)", self.path, self.folder,
                        "unreadable" if current is None else
                        f"pid {current.get('pid')} is no longer running on {current.get('host')}")
            self.path.unlink(missing_ok=True)
        raise UserInputError("could not take the output folder's lock: other runs keep taking it",
                             path=str(self.folder))

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        current = read_owner(self.path)
        if current is not None and current.get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("lock %s is no longer ours (taken over?); leaving it", self.path)

    def _create(self) -> bool:
        """Publish the lock complete or not at all: write a private file, then hard-link it to the lock
        name. ``link`` fails if the name exists, so of two runs only one wins, and no reader ever sees a
        half-written lock (which would look unreadable, hence stale)."""
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(strict_json(self.owner))
            os.chmod(temporary, 0o644)  # mkstemp makes 0600: others must be able to read who holds it
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    @staticmethod
    def _stale(owner: dict) -> bool:
        """Only a lock from this host can be judged: its pid is gone. Another host's lock counts as live."""
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        return not (isinstance(pid, int) and pid_alive(pid))

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class OutputFolderLock(L.Callback):
    """Holds :class:`OutputLock` on ``output_dir`` from fit setup (rank 0) until fit ends or fails.

    A callback rather than module hooks: only callbacks see ``on_exception``, and the lock must be
    released when fit fails too. Callbacks' ``setup`` runs before ``configure_model``, so a second run
    learns that the folder is busy before loading a large base model, and before the module's
    ``on_fit_start`` output-folder check.
    """

    def __init__(self, output_dir: str | None) -> None:
        self.output_dir = output_dir
        self.lock: OutputLock | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.output_dir is None or trainer.global_rank != 0:
            return
        self.lock = OutputLock(self.output_dir)
        self.lock.acquire()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()  # after on_fit_end, where the module writes its final outputs

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
