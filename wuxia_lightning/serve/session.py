"""A chat page session as JSONL: one line per prompt with its system prompt, settings and every column's reply.

Saved only where the user says (the page's path box; by default ``chat_sessions/<time>.jsonl`` under the
folder the page was started from, never inside the model folder), and never over an existing file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.generation import GenerationSettings
from wuxia_lightning.io import strict_json
from wuxia_lightning.serve.columns import ColumnReply

DEFAULT_SESSIONS_DIR = Path("chat_sessions")


def turn_record(prompt: str, system: str | None, settings: GenerationSettings, scales: dict[str, float],
                seed: int, replies: dict[str, ColumnReply], model_folder: Path, base_model: str) -> dict:
    """What the page showed for one prompt, and everything needed to ask it again."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": str(model_folder), "base_model": base_model,
            "prompt": prompt, "system": system,
            "settings": {**dataclasses.asdict(settings), **{f"{k}_scale": v for k, v in scales.items()},
                         "seed": seed},
            "replies": {key: {"text": r.text, "new_tokens": r.new_tokens, "stopped": r.stopped,
                              "seconds": round(r.seconds, 3)} for key, r in replies.items()}}


def default_session_path(sessions_dir: Path = DEFAULT_SESSIONS_DIR) -> Path:
    """``<sessions_dir>/<YYYYmmdd-HHMMSS>.jsonl``, with ``-2``, ``-3``… when saves fall in the same second."""
    stem = time.strftime("%Y%m%d-%H%M%S")
    path, n = sessions_dir / f"{stem}.jsonl", 1
    while path.exists():
        n += 1
        path = sessions_dir / f"{stem}-{n}.jsonl"
    return path


def save_session(path: str | Path, turns: Sequence[dict]) -> Path:
    """Write ``turns`` as JSONL at ``path`` (folders created); an existing file is never replaced.

    Written beside the target and hard-linked into place: the link fails if the name exists, even when
    another writer takes it meanwhile, and a reader never sees half a file.
    """
    path = Path(str(path).strip()).expanduser()
    if not str(path) or path.name in ("", ".") or path.is_dir():
        raise UserInputError("is a folder, not a file name for the session (e.g. session.jsonl)", path=str(path))
    if not turns:
        raise UserInputError("nothing to save yet: send a prompt first", path=str(path))
    if path.exists():
        raise UserInputError("already exists; not overwriting it (choose another file name)", path=str(path))
    text = "".join(strict_json(turn) + "\n" for turn in turns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a session log is for others to read too
        os.link(temporary, path)
    except FileExistsError:
        raise UserInputError("already exists; not overwriting it (choose another file name)",
                             path=str(path)) from None
    finally:
        os.unlink(temporary)
    return path.resolve()
