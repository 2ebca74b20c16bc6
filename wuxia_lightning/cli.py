"""The command line: ``wuxia fit|validate|test|predict --config configs/X.yaml [--section.key value …]``.

A thin LightningCLI: the model and data classes come from the YAML (``class_path``), every setting is
a typed ``__init__`` argument, so ``--print_config`` shows and validates all of them. The tokenizer /
base model named in the model section is linked into the data section so they cannot disagree.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.cli import LightningCLI

from wuxia_lightning.errors import UserInputError, report_user_error, verbose_requested


class WuxiaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for key in ("model_name_or_path", "tokenizer_name_or_path"):
            parser.link_arguments(f"model.init_args.{key}", f"data.init_args.{key}", apply_on="parse")


def main(args: list[str] | None = None) -> None:
    from_command_line = args is None
    args = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in args or verbose_requested()
    args = [a for a in args if a != "--verbose"]
    if from_command_line:  # LightningCLI reads sys.argv itself; hand it the cleaned list there
        sys.argv[1:], args = args, None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        WuxiaCLI(subclass_mode_model=True, subclass_mode_data=True, args=args,
                 save_config_kwargs={"overwrite": True})
    except UserInputError as error:
        if verbose:
            raise
        sys.exit(report_user_error(error))

