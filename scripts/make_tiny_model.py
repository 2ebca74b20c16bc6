#!/usr/bin/env python
"""Save a tiny Qwen2/Qwen3 causal LM with a tokenizer, loadable offline with from_pretrained.

    python scripts/make_tiny_model.py --out tiny_qwen2                       # tokenizer trained on data/sample
    python scripts/make_tiny_model.py --out tiny_qwen3 --arch qwen3 --tokenizer ../shared/fixtures/qwen2.5-tokenizer
"""

from __future__ import annotations

import argparse

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.pretrained.tiny import ARCHITECTURES, make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to create (must not exist)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="qwen2")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder; default: train one on data/sample")
    parser.add_argument("--seed", type=int, default=0)
    add_verbose_argument(parser)
    args = parser.parse_args()
    quiet_third_party(args.verbose)
    print(make_tiny_model(args.out, args.arch, args.tokenizer, seed=args.seed))


if __name__ == "__main__":
    main()
