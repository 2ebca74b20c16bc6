"""Content-addressed on-disk cache for corpus statistics that are slow to build (n-gram index, profiles)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wuxia_lightning.io import atomic_write, cache_root

__all__ = ["atomic_write", "content_key", "default_cache_dir"]


def default_cache_dir(name: str) -> Path:
    """``<cache root>/<name>``: the project's one cache root ($WUXIA_CACHE or ~/.cache/wuxia_lightning)."""
    return cache_root() / name


def content_key(texts: Iterable[str], settings: dict[str, Any]) -> str:
    """sha256 of the settings and every text; lengths are hashed too so ["ab","c"] != ["a","bc"]."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
