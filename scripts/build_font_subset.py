#!/usr/bin/env python
"""Build the CJK font subset the report's charts fall back to (a maintainer tool, not run in CI).

Cuts Noto Sans CJK SC Regular (Debian ``fonts-noto-cjk``, SIL OFL 1.1) down to the characters the charts
can draw (``wuxia_lightning.report.fonts.subset_text()``: function-word features, the other Chinese of chart
titles, printable ASCII, CJK punctuation) and writes, into ``wuxia_lightning/resources/fonts``:

- ``NotoSansCJKsc-wuxia-subset.otf``: the subset, CFF outlines kept (FreeType, hence every matplotlib
  backend, reads them), renamed to the family "Wuxia CJK Subset" so it is never taken for a full system
  Noto font (and "Noto" is a Google trademark);
- ``OFL.txt``: the font's copyright notice and the SIL OFL 1.1 text from the package's copyright file;
- ``README.md``: source package and version, the command that was run, the character list.

    apt-get install -y fonts-noto-cjk
    python scripts/build_font_subset.py /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

Rerun it after adding Chinese to a chart (``CHART_CJK_TEXT`` in ``wuxia_lightning/report/fonts.py``);
``tests/test_fonts.py`` fails while a chart's Chinese is missing from the subset.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection, TTFont

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "wuxia_lightning" / "resources" / "fonts"
SOURCE_FACE = "Noto Sans CJK SC"
DEBIAN_DOC = Path("/usr/share/doc/fonts-noto-cjk")
FAMILY = "Wuxia CJK Subset"
POSTSCRIPT_NAME = "WuxiaCJKSubset-Regular"
# Name records kept: copyright (0), the names we rewrite (1-6), trademark (7), description (10, ours),
# licence (13, 14): the OFL asks every copy to carry the copyright notice and the licence.
NAME_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 10, 13, 14)


def face_number(source: Path, face: str) -> int:
    """Index of the face whose full name is ``face`` in a .ttc collection (0 for a single-font file).

    By name, not a fixed index: the collection's order (JP, KR, SC, TC, HK, then Mono) is upstream's
    choice and may change between releases."""
    if source.read_bytes()[:4] != b"ttcf":
        return 0
    faces = [font["name"].getDebugName(4) for font in TTCollection(str(source), lazy=True).fonts]
    if face not in faces:
        raise SystemExit(f"{source}: no face named {face!r} (faces: {faces})")
    return faces.index(face)


def subset_font(source: Path, number: int, text: str) -> TTFont:
    """The subset: only ``text``'s glyphs, GPOS kerning kept (matplotlib shapes text with HarfBuzz), no
    vertical-writing tables; other layout features would pull in regional and vertical alternates
    (341 instead of 193 glyphs) that horizontal Simplified-Chinese labels never use."""
    options = subset.Options()
    options.font_number = number
    options.layout_features = ["kern"]
    options.name_IDs = list(NAME_IDS)
    options.name_languages = [0x0409]  # English records only
    options.notdef_outline = True  # a visible box, not nothing, if a glyph is ever missing
    options.drop_tables += ["BASE", "VORG", "vhea", "vmtx"]
    font = subset.load_font(str(source), options)
    font.recalcTimestamp = False  # the same input gives the same bytes
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    return font


def rename(font: TTFont, source_name: str) -> None:
    """Give the subset its own family name in the name table and in the CFF top dict."""
    version = font["name"].getDebugName(5) or ""
    names = {1: FAMILY, 2: "Regular", 3: f"{version};{POSTSCRIPT_NAME}", 4: f"{FAMILY} Regular",
             6: POSTSCRIPT_NAME,
             10: f"Subset of {source_name} ({version}) with the characters of wuxia_lightning's report charts."}
    for name_id, value in names.items():
        font["name"].setName(value, name_id, 3, 1, 0x0409)  # Windows Unicode English, all the subset keeps
    cff = font["CFF "].cff
    cff.fontNames = [POSTSCRIPT_NAME]
    top = cff.topDictIndex[0]
    top.FullName, top.FamilyName = f"{FAMILY} Regular", FAMILY


def ofl_text(copyright_file: Path, font: TTFont) -> str:
    """The font's copyright notice plus the SIL OFL 1.1 paragraph of a Debian copyright file, un-indented
    (Debian indents licence text by one space and writes blank lines as " .")."""
    text = copyright_file.read_text(encoding="utf-8")
    match = re.search(r"^License: SIL-1\.1[^\n]*\n((?:[ \t][^\n]*\n?)+)", text, flags=re.MULTILINE)
    if match is None:
        raise SystemExit(f"{copyright_file}: no 'License: SIL-1.1' paragraph")
    body = [line[1:] if line != " ." else "" for line in match.group(1).splitlines()]
    notice = [font["name"].getDebugName(i) for i in (0, 7, 13) if font["name"].getDebugName(i)]
    header = [f"{SOURCE_FACE} (subset: {FAMILY})", "", *notice, ""]
    return "\n".join(header + body).rstrip() + "\n"


def debian_version(doc_dir: Path) -> str:
    """The package version from the first line of ``changelog.Debian.gz``, e.g. ``1:20220127+repack1-1``."""
    changelog = doc_dir / "changelog.Debian.gz"
    if not changelog.is_file():
        return "unknown"
    with gzip.open(changelog, "rt", encoding="utf-8") as handle:
        match = re.match(r"\S+ \(([^)]+)\)", handle.readline())
    return match.group(1) if match else "unknown"


def readme(source: Path, number: int, font_version: str, package_version: str, command: str, text: str,
           out_font: Path) -> str:
    cjk = "".join(c for c in text if not c.isascii())
    return "\n".join([
        "# Bundled CJK font subset", "",
        f"`{out_font.name}` ({out_font.stat().st_size:,} bytes) is a subset of **{SOURCE_FACE} Regular** "
        f"({font_version}) from the Debian package `fonts-noto-cjk` {package_version} "
        f"(`{source.name}`, face {number} of the collection; sha256 `{_sha256(source)}`). "
        f"Its family name is \"{FAMILY}\" so that it is never mistaken for a full Noto font.", "",
        "Licence: SIL Open Font License 1.1, see `OFL.txt` (copied from the package's "
        "`/usr/share/doc/fonts-noto-cjk/copyright`). The subset stays under the OFL; the code of this "
        "repository does not.", "",
        "The report's charts use it only when the system has no CJK font (`wuxia_lightning/report/fonts.py`).", "",
        "## How it was made", "",
        "```sh", "apt-get install -y fonts-noto-cjk",
        "python scripts/build_font_subset.py /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "```", "",
        "This runs fontTools' subsetter: only the glyphs below, GPOS `kern` kept, other layout features and the "
        "vertical-writing tables (`BASE`, `VORG`, `vhea`, `vmtx`) dropped, CFF outlines kept "
        "(FreeType reads them, so matplotlib's Agg, PDF, SVG and PS backends draw them).", "",
        f"This copy was built with `{command}`. The build is deterministic: the same source file (sha256 "
        "above; e.g. unpacked with `apt-get download fonts-noto-cjk` and `dpkg-deb -x` instead of installed) "
        "gives the same bytes.", "",
        "## Characters", "",
        f"{len(text)} characters: printable ASCII, and these {len(cjk)} (function-word features of "
        "`wuxia_lightning.metrics.FEATURE_NAMES`, `CHART_CJK_TEXT` and `SUBSET_PUNCTUATION` of "
        "`wuxia_lightning/report/fonts.py`):", "",
        cjk, "",
        "To add characters, extend `CHART_CJK_TEXT` and rerun the command above.", "",
    ])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, text: str) -> None:
    """Fail loudly unless matplotlib's FreeType wrapper loads the file and finds a glyph for every char."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(path))
    missing = [c for c in text if font.get_char_index(ord(c)) == 0]
    if missing:
        raise SystemExit(f"{path}: no glyph for {''.join(missing)!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="NotoSansCJK-Regular.ttc (or a NotoSansCJKsc-Regular.otf)")
    parser.add_argument("--font-number", type=int, default=None,
                        help=f"face in a .ttc collection; default: the face named {SOURCE_FACE!r}")
    parser.add_argument("--copyright", type=Path, default=DEBIAN_DOC / "copyright",
                        help="Debian copyright file holding the OFL text (default: %(default)s)")
    parser.add_argument("--package-version", default=None,
                        help="fonts-noto-cjk version; default: read from changelog.Debian.gz beside --copyright")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)

    from wuxia_lightning.report.fonts import BUNDLED_FONT, subset_text

    text = subset_text()
    number = args.font_number if args.font_number is not None else face_number(args.source, SOURCE_FACE)
    font = subset_font(args.source, number, text)
    source_name = font["name"].getDebugName(4) or SOURCE_FACE
    font_version = font["name"].getDebugName(5) or "unknown version"
    licence = ofl_text(args.copyright, font)
    rename(font, source_name)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_font = args.out_dir / BUNDLED_FONT.name
    font.save(str(out_font))
    verify(out_font, text)
    (args.out_dir / "OFL.txt").write_text(licence, encoding="utf-8")
    package_version = args.package_version or debian_version(args.copyright.parent)
    command = shlex.join(["python", "scripts/build_font_subset.py",
                          *(sys.argv[1:] if argv is None else list(argv))])
    (args.out_dir / "README.md").write_text(
        readme(args.source, number, font_version, package_version, command, text, out_font), encoding="utf-8")
    print(f"{out_font} ({out_font.stat().st_size:,} bytes, {len(text)} characters, face {number})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
