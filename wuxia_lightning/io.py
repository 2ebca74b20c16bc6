"""Files and folders written so that a reader never sees half of them, and the project's cache root."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """Where tiny models, token caches and corpus indexes live: ``$WUXIA_CACHE`` or ~/.cache/wuxia_lightning."""
    return Path(os.environ.get("WUXIA_CACHE") or Path.home() / ".cache" / "wuxia_lightning")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path`` (same suffix), then rename it into place: the
    rename is atomic, so concurrent readers and ranks see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextmanager
def staged_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; when the block succeeds it becomes ``target``.

    ``replace=False`` never touches an existing ``target`` (FileExistsError); ``replace=True`` swaps it
    out and deletes the old contents only after the new folder is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs are for others to read
    try:
        yield staging
        if not target.exists():
            try:
                os.rename(staging, target)
            except OSError as error:  # created meanwhile (another rank): keep theirs
                raise FileExistsError(f"{target} already exists; not overwriting it") from error
        elif replace:
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / target.name)
            os.rename(staging, target)
            shutil.rmtree(retired)
        else:
            raise FileExistsError(f"{target} already exists; not overwriting it")
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def finite_or_null(value):
    """``value`` with every NaN/Inf float (at any depth) replaced by None: strict JSON can hold it.

    NaN is what a metric returns when it is undefined (the function-word JS of a reply with no function
    words); ``null`` says the same thing in a form every JSON parser accepts.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value, **kwargs) -> str:
    """``json.dumps`` of ``value`` with NaN/Inf as null; never writes the non-standard ``NaN`` token."""
    return json.dumps(finite_or_null(value), ensure_ascii=False, allow_nan=False, **kwargs)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it; put it straight back
    os.umask(mask)
    return mask
