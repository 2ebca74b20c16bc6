"""User-facing errors: anything caused by the user's input names the file (and line / field)."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits non-zero (no traceback)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(part) for part in (path, line) if part is not None)
        if field is not None:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


VERBOSE_ENV = "WUXIA_VERBOSE"


def verbose_requested() -> bool:
    import os

    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def report_user_error(error: Exception) -> int:
    """Print one line on stderr and return exit code 2; with WUXIA_VERBOSE=1 re-raise for the traceback."""
    import sys

    if verbose_requested():
        raise error
    print(f"error: {error}", file=sys.stderr)
    return 2
