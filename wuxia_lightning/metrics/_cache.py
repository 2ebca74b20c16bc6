"""Content-addressed on-disk cache for corpus statistics that are slow to build (n-gram index, profiles)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def default_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/wuxia_lightning/<name>``, falling back to ``~/.cache``."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "wuxia_lightning" / name


def content_key(texts: Iterable[str], settings: dict[str, Any]) -> str:
    """sha256 of the settings and every text; lengths are hashed too so ["ab","c"] != ["a","bc"]."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder then rename, so concurrent ranks never read
    a half-written cache file (the rename is atomic on POSIX and Windows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
