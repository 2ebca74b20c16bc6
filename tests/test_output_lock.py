"""One output folder, one writer: live locks refuse, stale locks are taken over, release is ours only;
predict never overwrites predictions unless asked."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess

import pytest

from wuxia_lightning.callbacks.output_lock import OutputLock, lock_path, pid_alive
from wuxia_lightning.errors import UserInputError


def write_lock(folder, pid: int, host: str | None = None) -> None:
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "token": "theirs",
                                "started": "earlier"}))


def finished_pid() -> int:
    """The pid of a process that has exited and been reaped: not running on this host."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_lock_records_owner_and_is_removed_on_release(tmp_path):
    folder = tmp_path / "out"
    lock = OutputLock(folder)
    lock.acquire()
    owner = json.loads(lock_path(folder).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert lock_path(folder).stat().st_mode & 0o044  # others can read who holds the folder
    assert not folder.exists()  # the lock sits beside the folder: taking it writes nothing inside
    lock.release()
    assert not lock_path(folder).exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_second_writer_is_refused_naming_folder_pid_and_host(tmp_path):
    folder = tmp_path / "out"
    with OutputLock(folder):
        with pytest.raises(UserInputError) as raised:
            OutputLock(folder).acquire()
    message = str(raised.value)
    assert str(folder) in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert not lock_path(folder).exists()  # the refused run did not remove the holder's lock on its way out


def test_lock_of_another_live_process_is_refused(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(tmp_path / "out", sleeper.pid)
        with pytest.raises(UserInputError, match=f"pid {sleeper.pid}"):
            OutputLock(tmp_path / "out").acquire()
        assert json.loads(lock_path(tmp_path / "out").read_text())["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_lock_is_taken_over_with_a_logged_message(tmp_path, caplog):
    dead = finished_pid()
    assert not pid_alive(dead)
    write_lock(tmp_path / "out", dead)
    lock = OutputLock(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="wuxia_lightning.callbacks.output_lock"):
        lock.acquire()
    assert f"pid {dead} is no longer running" in caplog.text
    assert json.loads(lock_path(tmp_path / "out").read_text())["token"] == lock.owner["token"]
    lock.release()


def test_lock_from_another_host_is_never_judged_stale(tmp_path):
    write_lock(tmp_path / "out", finished_pid(), host="some-other-host.invalid")
    with pytest.raises(UserInputError, match="some-other-host.invalid"):
        OutputLock(tmp_path / "out").acquire()


def test_release_leaves_a_lock_that_was_taken_over(tmp_path):
    lock = OutputLock(tmp_path / "out")
    lock.acquire()
    write_lock(tmp_path / "out", os.getpid())  # someone replaced it (e.g. judged ours stale)
    lock.release()
    assert json.loads(lock_path(tmp_path / "out").read_text())["token"] == "theirs"


def test_pid_alive_never_addresses_process_groups():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_predict_never_overwrites_predictions_unless_asked(tmp_path):
    from wuxia_lightning.modules.instruct import write_predictions

    write_predictions(tmp_path, [{"generation": "first"}], {"n": 1}, overwrite=False)
    with pytest.raises(UserInputError, match="predictions file exists"):
        write_predictions(tmp_path, [{"generation": "second"}], {"n": 2}, overwrite=False)
    assert json.loads((tmp_path / "predictions.jsonl").read_text())["generation"] == "first"
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 1
    write_predictions(tmp_path, [{"generation": "second"}], {"n": 2}, overwrite=True)
    assert json.loads((tmp_path / "predictions.jsonl").read_text())["generation"] == "second"
