"""User paths → files → text: the one resolver of file/folder/glob arguments, and decoding in any
encoding users' files come in (BOM, UTF-8, UTF-16 without BOM, GB18030, Big5 …).

Both the novel corpus and the chat data resolve their paths here, with the same rules and the same
errors; the tiny offline base model reads its sample text here too. Nothing of the package is imported
but the error type, so every layer may use it.
"""

from __future__ import annotations

import codecs
import functools
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from wuxia_lightning.errors import UserInputError

PathArg = str | os.PathLike | Sequence[str | os.PathLike]


# ---------------------------------------------------------------------------------------------- paths

def resolve_paths(sources: PathArg, suffixes: Sequence[str], what: str, field: str | None = None) -> list[Path]:
    """Files as given, folders as their files ending in ``suffixes`` (recursive, sorted, hidden parts
    skipped), globs expanded (sorted). Order of the arguments is kept and duplicates are dropped (first
    occurrence wins). Every entry must yield at least one file, so a typo in one of several sources is
    reported instead of silently training on less data. ``what`` names the data in errors."""
    entries = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not entries:
        raise UserInputError(f"no {what} given", field=field)
    resolved: dict[Path, None] = {}
    for entry in entries:
        for path in _expand(os.fspath(entry), tuple(s.lower() for s in suffixes), what):
            resolved.setdefault(path, None)
    return list(resolved)


def _expand(entry: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    path = Path(entry).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return _files_in(path, entry, suffixes)
    if any(char in entry for char in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = [f for m in matches for f in ([m] if m.is_file() else _files_in(m, entry, suffixes))]
        if not files:
            raise UserInputError(f"no files match the pattern '{entry}'", path=entry)
        return files
    raise UserInputError(f"{what} not found: no such file or folder", path=entry)


def _files_in(folder: Path, entry: str, suffixes: tuple[str, ...]) -> list[Path]:
    # Hidden folders/files (.git, .ipynb_checkpoints, editor backups) are never data.
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise UserInputError(f"no {' / '.join('*' + s for s in suffixes)} files in folder '{entry}'", path=entry)
    return files


# ------------------------------------------------------------------------------------------- decoding

_BOMS: tuple[tuple[bytes, str], ...] = (  # UTF-32 before UTF-16: FF FE 00 00 starts with the UTF-16 LE BOM
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Detector answers → the codec we decode with: GB18030 is a superset of GB2312/GBK, and cp950 (Big5 plus
# Microsoft's extensions) is what Big5 novel files are usually written in; HKSCS maps Big5's user-defined
# codes to unrelated characters, so it is only a fallback.
_PREFERRED: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",), "gbk": ("gb18030",), "gb18030": ("gb18030",), "hz": ("gb18030", "hz"),
    "big5": ("cp950", "big5"), "cp950": ("cp950", "big5"), "big5hkscs": ("cp950", "big5hkscs"),
}


def decode_file(path: Path) -> tuple[str, str]:
    """(text, encoding name): BOM first, then strict UTF-8, then charset_normalizer's best guess."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from exc
    for bom, name in _BOMS:
        if data.startswith(bom):
            return _strict(data[len(bom):], name.replace("-sig", ""), path), name
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        return _strict(data, utf16, path, "UTF-16 without a byte-order mark (NUL bytes in every other "
                       "position)"), utf16
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    return _detect_and_decode(data, path)


def _detect_and_decode(data: bytes, path: Path) -> tuple[str, str]:
    from charset_normalizer import from_bytes  # imported lazily: only non-UTF-8 files need it

    best = from_bytes(data).best()
    if best is None:
        raise UserInputError("cannot detect the text encoding (is this a text file?); "
                             "save it as UTF-8", path=str(path))
    detected = codecs.lookup(best.encoding).name  # canonical codec name, e.g. 'gb2312', 'big5'
    errors = []
    for name in (*_PREFERRED.get(detected, ()), detected):
        try:
            return data.decode(name), name
        except UnicodeDecodeError as exc:
            errors.append(f"{name}: byte {exc.start}")
    raise UserInputError(f"detected encoding {detected} but the file does not decode with it "
                         f"({'; '.join(errors)}); save it as UTF-8", path=str(path))


def _utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le' / 'utf-16-be' when NUL bytes sit mostly on odd / even offsets: ASCII and line breaks
    in UTF-16 carry a zero byte, which strict UTF-8 would accept and turn into NUL-riddled text."""
    if b"\x00" not in data or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if max(even, odd) < 0.1 * (len(data) // 2) or min(even, odd) * 4 > max(even, odd):
        return None  # too few zeros, or zeros on both sides (binary, or UTF-32 without a BOM)
    return "utf-16-be" if even > odd else "utf-16-le"


def _strict(data: bytes, encoding: str, path: Path, why: str | None = None) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        reason = why or f"has a {encoding} byte-order mark"
        raise UserInputError(f"{reason} but byte {exc.start} is not valid {encoding}; save it as UTF-8",
                             path=str(path)) from exc


@functools.lru_cache(maxsize=1)
def _t2s_converter():
    import opencc  # the PyPI 'opencc' package; 't2s' resolves to its bundled t2s.json

    return opencc.OpenCC("t2s")


def to_simplified_chinese(text: str) -> str:
    """Traditional → Simplified with OpenCC ``t2s`` (character and phrase tables, no regional idioms)."""
    return _t2s_converter().convert(text)
