"""The command line: ``wuxia fit|validate|test|predict --config configs/X.yaml [--section.key value …]``.

A thin LightningCLI: the model and data classes come from the YAML (``class_path``), every setting is
a typed ``__init__`` argument, so ``--print_config`` shows and validates all of them. The tokenizer /
base model named in the model section is linked into the data section so they cannot disagree.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from wuxia_lightning.callbacks.progress import ProgressLines
from wuxia_lightning.console import quiet_third_party
from wuxia_lightning.errors import UserInputError, report_user_error, verbose_requested

log = logging.getLogger(__name__)

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Subcommands that only evaluate: the configs' loggers and config.yaml record training runs.
EVALUATE_ONLY = ("validate", "test", "predict")
LOGGER_FLAG = "--trainer.logger"


class WuxiaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for key in ("model_name_or_path", "tokenizer_name_or_path"):
            parser.link_arguments(f"model.init_args.{key}", f"data.init_args.{key}", apply_on="parse")
        # Always present (a config or --progress.* tunes it): plain progress lines when stdout is a file.
        parser.add_lightning_class_args(ProgressLines, "progress")

    def before_instantiate_classes(self) -> None:
        """Strategy choices that Lightning rejects with a bare message (FSDPStrategy on CPU) or not at all
        (FSDP with a 4-bit base: training on garbage): refused here, before any process starts."""
        from wuxia_lightning.modules.sharding import check_strategy_choice

        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.get("model")
        init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
        quantization = init_args.get("quantization") if init_args is not None else None
        check_strategy_choice(config.trainer.strategy, config.trainer.accelerator, quantization)

    def before_fit(self) -> None:
        self._started = time.time()

    def after_fit(self) -> None:
        self.say_written(("wuxia_manifest.json",), "trained model written to {folder}")

    def before_predict(self) -> None:
        self._started = time.time()

    def after_predict(self) -> None:
        self.say_written(("predictions.jsonl", "summary.json"), "wrote {path}")

    def say_written(self, names: tuple[str, ...], template: str) -> None:
        """Print where the run wrote ``names`` (in the model's output_dir), if it wrote them just now."""
        folder = getattr(self.model.hparams, "output_dir", None)
        if not folder or not self.trainer.is_global_zero:
            return
        for name in names:
            path = Path(folder) / name
            if path.exists() and path.stat().st_mtime >= self._started - 1:  # not a file from an earlier run
                print(template.format(folder=folder, path=path), flush=True)


def subcommand_of(args: list[str]) -> str | None:
    return next((arg for arg in args if arg in SUBCOMMANDS), None)


def without_config_loggers(args: list[str]) -> list[str]:
    """validate/test/predict: no logger (no new version folder) unless the command line asks for one with
    --trainer.logger…; the configs' loggers are for training, and the metrics are printed as a table."""
    subcommand = subcommand_of(args)
    if subcommand not in EVALUATE_ONLY or any(arg.startswith(LOGGER_FLAG) for arg in args):
        return args
    if subcommand != "predict":  # predict logs no metrics: nothing to explain
        log.info("%s: metrics are printed, not logged (pass --trainer.logger … to log them)", subcommand)
    return [*args, f"{LOGGER_FLAG}=false"]


def main(args: list[str] | None = None) -> None:
    from_command_line = args is None
    args = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in args or verbose_requested()
    args = [a for a in args if a != "--verbose"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party(verbose)
    args = without_config_loggers(args)
    # config.yaml records how a model was trained; evaluating it should not overwrite that record.
    save_config = None if subcommand_of(args) in EVALUATE_ONLY else SaveConfigCallback
    if from_command_line:  # LightningCLI reads sys.argv itself; hand it the cleaned list there
        sys.argv[1:], args = args, None
    try:
        WuxiaCLI(subclass_mode_model=True, subclass_mode_data=True, args=args,
                 save_config_callback=save_config, save_config_kwargs={"overwrite": True})
    except UserInputError as error:
        if verbose:
            raise
        sys.exit(report_user_error(error))
