#!/usr/bin/env python
"""Copy novel files into the data folder as clean UTF-8: detect each file's encoding, clean, report.

    python scripts/setup_data.py ~/Downloads/novels/*.txt --out data/novels
    python scripts/setup_data.py ~/Downloads/novels --out data/novels --to-simplified --drop-modern

SRC is a file, a folder (its .txt files, recursive) or a glob; several may be given. Each input file
is read with the project's corpus reader (encoding detection for UTF-8 / GB18030 / Big5 / UTF-16,
optional Traditional→Simplified, download-site boilerplate removal, optional modern-vocabulary filter)
and written to OUT/<same stem>.txt as UTF-8, its chapters separated by a blank line. The report table
says, per file, which encoding was detected and what each cleaning rule removed (lines/chars).

Existing output files are never replaced unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wuxia_lightning.errors import UserInputError, report_user_error
from wuxia_lightning.io import atomic_write


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SRC", help="text files, folders or globs")
    parser.add_argument("--out", default="data/novels", help="output folder (default: %(default)s)")
    parser.add_argument("--to-simplified", action="store_true", help="convert Traditional to Simplified (OpenCC t2s)")
    parser.add_argument("--drop-modern", action="store_true",
                        help="drop paragraphs with modern vocabulary (手机, 电脑, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written, skipped, table = setup(args.sources, Path(args.out), args.to_simplified, args.drop_modern,
                                        args.overwrite)
    except UserInputError as error:
        return report_user_error(error)
    print(table)
    print(f"\nwrote {len(written)} file(s) to {args.out}")
    for source in skipped:
        print(f"skipped {source}: nothing left after cleaning (see the report)")
    return 0


def setup(sources: Sequence[str], out: Path, to_simplified: bool, drop_modern: bool,
          overwrite: bool) -> tuple[list[Path], list[str], str]:
    """(written files, sources with nothing left, report table)."""
    from wuxia_lightning.data.corpus import read_corpus

    documents, report = read_corpus(list(sources), to_simplified=to_simplified, drop_modern=drop_modern)
    texts = texts_by_source(documents)
    targets = plan_targets([f.path for f in report.files], out)
    # Check every target before writing any, so a refusal leaves the folder as it was.
    if not overwrite:
        refuse_existing([t for t in targets.values() if t.exists()])
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for source, target in targets.items():
        if source not in texts:
            skipped.append(source)
            continue
        atomic_write(target, lambda path, text=texts[source]: path.write_text(text, encoding="utf-8", newline="\n"))
        written.append(target)
    return written, skipped, report.format()


def texts_by_source(documents) -> dict[str, str]:
    """One text per input file: its documents (chapters) in order, separated by a blank line."""
    chapters: dict[str, list[str]] = {}
    for doc in documents:
        chapters.setdefault(doc.source, []).append(doc.text)
    return {source: "\n\n".join(parts) + "\n" for source, parts in chapters.items()}


def plan_targets(sources: Sequence[str], out: Path) -> dict[str, Path]:
    """OUT/<stem>.txt per source; two sources with one stem would overwrite each other, so refuse."""
    targets: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for source in sources:
        target = out / f"{Path(source).stem}.txt"
        if target in seen:
            raise UserInputError(f"both {seen[target]} and {source} would be written to {target}; "
                                 "rename one of them", path=source)
        seen[target] = source
        targets[source] = target
    return targets


def refuse_existing(existing: Sequence[Path]) -> None:
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3
                                                             else "")
        raise UserInputError(f"output file(s) already exist: {names}; pass --overwrite to replace them")


if __name__ == "__main__":
    sys.exit(main())
