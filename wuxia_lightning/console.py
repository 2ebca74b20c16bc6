"""Silence third-party chatter the user cannot act on, at its source; ``WUXIA_VERBOSE=1`` brings it back.

Every entry names the exact logger (or warning category and module) and the exact message, so nothing
else from those libraries is hidden and the project's own warnings always show. Why each one is noise:

* kernels / bitsandbytes: offline, bitsandbytes tries to fetch an optional faster CPU 4-bit kernel from
  the Hub on import, says it skipped a trust check and then that it fell back to its built-in kernel.
  Both are expected offline and change nothing for the user.
* transformers' ``is_gradient_checkpointing`` and torch's ``LeafSpec`` deprecations are raised by calls
  inside peft and Lightning, not by our code; the user cannot fix them.
* Lightning's litlogger tip is an advertisement printed on every run.
* jieba logs at DEBUG, through its own handler, how it built its dictionary — several lines per process.
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings

from wuxia_lightning.errors import verbose_requested

# logger name -> messages (regexes matched at the start of the formatted message) dropped from it
NOISY_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "kernels._internals.hf_hub": (r"Skipping publisher trust check for '.*' because Hugging Face Hub is in offline mode",),
    "bitsandbytes.backends.cpu.ops": (r"Failed to load CPU gemm_4bit_forward from kernels-community",),
    "lightning.pytorch.utilities.rank_zero": (r"💡 Tip: .*litlogger",),
    # We add the infill tokens on purpose and say so; the init method of their rows is not the user's concern.
    "transformers.modeling_utils": (r"The new embeddings will be initialized from a multivariate normal",),
    "jieba": (r"Building prefix dict from ", r"Loading model from cache ", r"Loading model cost ",
              r"Prefix dict has been built successfully", r"Dumping model to file cache "),
}

# (message regex, category, module regex of the line that warns)
NOISY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)


class DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``patterns``.

    A filter rather than a raised level: jieba resets its logger to DEBUG when imported, and the other
    loggers also carry warnings worth seeing.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


def quiet_third_party(verbose: bool = False) -> bool:
    """Install the filters above unless ``verbose`` or ``WUXIA_VERBOSE`` is set; True if they were installed.

    Safe to call more than once: a logger gets at most one of our filters.
    """
    if verbose or verbose_requested():
        return False
    for name, patterns in NOISY_LOG_MESSAGES.items():
        logger = logging.getLogger(name)  # created now if the library is not imported yet: it reuses it
        if not any(isinstance(existing, DropMessages) for existing in logger.filters):
            logger.addFilter(DropMessages(patterns))
    for message, category, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _quiet_transformers_progress_bars()
    return True


def _quiet_transformers_progress_bars() -> None:
    """transformers draws "Loading weights" / "Writing model shards" bars for a tiny model in a split
    second; in a log file they are two lines of carriage returns each time. Our own messages say what is
    being loaded and written."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """The scripts' ``--verbose``: pass ``args.verbose`` to :func:`quiet_third_party`."""
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party warnings and log lines (WUXIA_VERBOSE=1 also shows tracebacks)")
