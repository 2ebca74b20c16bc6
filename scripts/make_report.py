#!/usr/bin/env python
"""Turn a Lightning log folder into a Markdown report with PNG plots; prints the path of report.md.

    python scripts/make_report.py lightning_logs/quickstart_style/version_6
    python scripts/make_report.py lightning_logs/quickstart_instruct/version_6 \
        --predictions outputs/quickstart/stacked --out reports/instruct
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.errors import report_user_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", help="CSVLogger folder with metrics.csv (optionally style_eval.json)")
    parser.add_argument("--out", default=None, help="report folder; default LOG_DIR/report")
    parser.add_argument("--predictions", default=None,
                        help="predict output folder (predictions.jsonl, summary.json)")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    quiet_third_party(args.verbose)
    from wuxia_lightning.report import build_report  # after parsing: --help should not wait for matplotlib

    try:
        report = build_report(args.log_dir, args.out, args.predictions)
    except FileNotFoundError as error:
        return report_user_error(error)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
