"""Command-line parsing whose every mistake is one line (`prog: error: ...`) and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line that points at --help instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (see {self.prog} --help)")


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def numbers(text: str, count: int, what: str, example: str) -> list[float]:
    """`count` comma-separated finite numbers, or an `ArgumentTypeError` naming the format."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not {example}")
    return values
