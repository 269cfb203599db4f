"""The one base of every mistake a user can make with the tools, and the one place that reports it.

A `UserError` says what was given and how to fix it (`data.path=x does not exist; ...`).
Each part of the package raises its own subclass (`ConfigError`, `WeightsError`, `PrepError`,
...), so callers can still tell them apart. Every console tool runs its work through
`run_tool`, which prints such an error as one line, `prog: error: <message>`, and exits with
status 2; any other exception is a bug and keeps its traceback. `SAM_TRAIN_TRACEBACK=1` shows
the traceback of a user's mistake too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

TRACEBACK_VARIABLE = "SAM_TRAIN_TRACEBACK"
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A problem with what the user gave (a key, a value, a file, a checkpoint); the message
    names it and the fix."""


class UsageError(UserError):
    """A command-line argument a tool cannot use (a missing file, an unwritable output, a busy
    port); the message names the argument and the fix."""


def exit_with_error(prog: str, message: str) -> NoReturn:
    """Print `prog: error: message` on stderr and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def one_line(text: str) -> str:
    """A message of several lines (a list of problems) as one line."""
    lines = [line.strip().removeprefix("- ") for line in str(text).splitlines()]
    return "; ".join(line for line in lines if line)


def describe(err: BaseException) -> str:
    """The user's view of an error: its message, or for an OS error the file and the reason
    (`out/x.png: Permission denied`) rather than `[Errno 13] ...`."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return one_line(str(err)) or type(err).__name__


def user_error_in(
    err: BaseException, expected: tuple[type[BaseException], ...] = ()
) -> BaseException | None:
    """The user's mistake behind `err` (a `UserError`, a missing file, or one of `expected`),
    looked for along its chain of causes, since Hydra's `instantiate` and Lightning wrap what a
    constructor raised; None when there is none (a bug)."""
    kinds = (UserError, FileNotFoundError, *expected)
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and not any(current is s for s in seen):
        if isinstance(current, kinds):
            return current
        seen.append(current)
        current = current.__cause__ or current.__context__
    return None


def run_tool(
    prog: str,
    work: Callable[..., T],
    *args: object,
    expected: tuple[type[BaseException], ...] = (),
    cleanup: Callable[[], str | None] | None = None,
    **kwargs: object,
) -> T:
    """`work(*args, **kwargs)`; a user's mistake in it ends as one line on stderr and exit 2
    (`SystemExit(2)`, as argparse ends a bad flag, so a tool's `main` ends alike in a console
    and when called from Python).

    Args:
        prog: the tool's name as the user typed it (`sam-prep masks` for a subcommand).
        expected: more exception types that are the user's (e.g. `OSError` where the tool
            writes where it was told); `UserError` and `FileNotFoundError` always are.
        cleanup: run before the error is printed (e.g. removes a run folder nothing was
            written to); a line it returns is printed after the error (where files are).
    """
    try:
        return work(*args, **kwargs)
    except Exception as err:
        found = user_error_in(err, expected)
        if found is None or os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        note = cleanup() if cleanup is not None else None
        print(f"{prog}: error: {describe(found)}", file=sys.stderr, flush=True)
        if note:
            print(f"{prog}: {note}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
