#!/usr/bin/env python
"""Rewrite docs/CONFIG_GUIDE.md from the real schema (the classes' ``__init__`` signatures and docstrings).

    python scripts/make_config_guide.py            # writes docs/CONFIG_GUIDE.md
    python scripts/make_config_guide.py --check    # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wuxia_lightning.config_guide import render
from wuxia_lightning.io import atomic_write

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "CONFIG_GUIDE.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the guide is up to date")
    parser.add_argument("--out", type=Path, default=GUIDE, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run python scripts/make_config_guide.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    atomic_write(args.out, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
