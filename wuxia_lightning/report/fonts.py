"""A font that can draw the Chinese on the report's charts, on any machine.

matplotlib's default font (DejaVu Sans) has no CJK glyphs: Chinese labels come out as empty boxes, one
"Glyph … missing from font(s)" warning per character. So the charts look for a CJK font the system has
(matplotlib's font list, then ``fc-list :lang=zh``) and, when there is none, use the subset of Noto Sans CJK
SC shipped in ``wuxia_lightning/resources/fonts`` (SIL OFL 1.1; how it was built:
``resources/fonts/README.md`` and ``scripts/build_font_subset.py``). The subset holds only what the charts
draw, so :func:`font_covers` lets a caller check a label before trusting a font with it.
"""

from __future__ import annotations

import shutil
import string
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from matplotlib.font_manager import fontManager, get_font

CJK_FONT_NAMES = ("Noto Sans CJK", "Noto Serif CJK", "Source Han", "WenQuanYi", "Droid Sans Fallback",
                  "AR PL", "SimHei", "Microsoft YaHei", "PingFang", "Heiti", "Songti")
CJK_PROBE = "之"  # a glyph every Chinese font has and no Latin font has

BUNDLED_FONT = Path(__file__).resolve().parents[1] / "resources" / "fonts" / "NotoSansCJKsc-wuxia-subset.otf"
# Chinese that charts draw besides the function-word features (benchmarks/replication/render.py's title).
# Add here whatever new Chinese a chart draws, then rebuild the subset (scripts/build_font_subset.py);
# tests/test_fonts.py fails while a chart's Chinese is missing from the subset.
CHART_CJK_TEXT = "虚词"
# Punctuation a Chinese label may plausibly carry, so a small wording change needs no rebuild.
SUBSET_PUNCTUATION = "，。、：；！？（）《》「」“”‘’…—·"


@dataclass(frozen=True)
class CjkFont:
    """A font file for Chinese labels; ``bundled`` says it is the package's subset, not a system font."""

    name: str
    path: Path
    bundled: bool = False


@lru_cache(maxsize=16)
def _char_indices(path: str) -> dict[int, int]:
    """Code point -> glyph index of a font file (face 0 of a collection, the face matplotlib draws)."""
    return get_font(path).get_charmap()


def missing_characters(path: str | Path, text: str) -> str:
    """The characters of ``text`` (whitespace aside) without a glyph in the font, in order, deduplicated.

    Empty for a font that draws all of ``text``; unreadable files miss everything.
    """
    try:
        charmap = _char_indices(str(path))
    except (OSError, RuntimeError, ValueError):
        charmap = {}
    missing: dict[str, None] = {}
    for char in text:
        if not char.isspace() and charmap.get(ord(char), 0) == 0:
            missing[char] = None
    return "".join(missing)


def font_covers(path: str | Path, text: str) -> bool:
    """True when every character of ``text`` has a glyph in the font at ``path``.

    A subset (ours, or a system font cut down to Latin) passes a name check yet draws empty boxes for
    what it lacks; callers fall back to code points for labels a font does not cover.
    """
    return not missing_characters(path, text)


def _covers_cjk(path: str | Path) -> bool:
    return font_covers(path, CJK_PROBE)


def _fc_list_paths() -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    try:
        command = ["fc-list", ":lang=zh", "file"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]


def _is_bundled(path: str | Path) -> bool:
    return Path(path).resolve() == BUNDLED_FONT


def system_cjk_font() -> CjkFont | None:
    """A CJK font the machine has: known CJK families among matplotlib's fonts first, then whatever
    ``fc-list :lang=zh`` reports (fonts matplotlib's cache may predate). The glyph is probed because a
    name match alone has lied before (e.g. Latin-only subsets); the bundled subset never counts."""
    for entry in fontManager.ttflist:
        if (any(name.lower() in entry.name.lower() for name in CJK_FONT_NAMES)
                and not _is_bundled(entry.fname) and _covers_cjk(entry.fname)):
            return CjkFont(entry.name, Path(entry.fname))
    for path in _fc_list_paths():
        if not _is_bundled(path) and _covers_cjk(path):
            fontManager.addfont(path)
            return CjkFont(get_font(path).family_name, Path(path))
    return None


def bundled_cjk_font() -> CjkFont | None:
    """The packaged Noto Sans CJK SC subset, registered with matplotlib's font manager (so its family name
    works in ``FontProperties(family=…)`` too). None only if the file is missing from the installation."""
    if not BUNDLED_FONT.is_file():
        return None
    if not any(_is_bundled(entry.fname) for entry in fontManager.ttflist):
        fontManager.addfont(str(BUNDLED_FONT))
    return CjkFont(get_font(str(BUNDLED_FONT)).family_name, BUNDLED_FONT, bundled=True)


@lru_cache(maxsize=1)
def find_cjk_font() -> CjkFont | None:
    """The font for Chinese chart labels: a system CJK font (a full font draws any label), else the
    bundled subset. Cached: the system scan probes font files and may run ``fc-list``."""
    return system_cjk_font() or bundled_cjk_font()


def subset_text() -> str:
    """Every character the bundled subset must draw: the function-word features, the other Chinese of the
    charts, printable ASCII (digits, the "<pos:u> other particles" labels, code points) and CJK punctuation.

    Sorted and deduplicated, so the build is reproducible. Imports the metrics lazily (torch).
    """
    from wuxia_lightning.metrics import FEATURE_NAMES

    chars = {c for name in FEATURE_NAMES for c in name} | set(CHART_CJK_TEXT) | set(SUBSET_PUNCTUATION)
    chars |= {c for c in string.printable if c.isprintable()}  # printable ASCII: no tabs or newlines
    return "".join(sorted(chars))


# The jieba POS buckets of the function-word features (wuxia_lightning.metrics.function_words).
POS_NAMES = {"u": "other particles", "p": "other prepositions", "c": "other conjunctions",
             "y": "other modal particles", "e": "other interjections"}


def feature_label(feature: str, cjk: bool) -> str:
    """Axis label of one function-word feature.

    Without a CJK font, matplotlib draws empty boxes for Chinese (and warns per glyph), so labels become
    code points ("U+4E4B"); the report prints a key mapping them back to the characters.
    """
    if feature.startswith("<pos:") and feature.endswith(">"):
        tag = feature[5:-1]
        return f"{feature} {POS_NAMES[tag]}" if tag in POS_NAMES else feature
    if cjk or feature.isascii():
        return feature
    return " ".join(f"U+{ord(char):04X}" if not char.isascii() else char for char in feature)
