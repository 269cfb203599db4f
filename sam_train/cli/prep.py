"""`sam-prep`: turn image folders, COCO and SA-1B data into webdataset shards (once, in
parallel). The conversion logic lives in `data_prep/`; the subcommands' arguments live in
`sam_train/cli/prep_*.py`; this file only gathers them and runs the one asked for.

Adding a subcommand: write `sam_train/cli/prep_<name>.py` with
`add_parser(subparsers) -> None`, which registers each of its subcommands with
`prep_args.add_subcommand(subparsers, name, help, run, "src: help", ...)` (`run(args)` does
the work; `add_shard_args` / `shard_options` / `print_report` are the shared shard options and
report); then import the module below and append it to `SUBCOMMAND_MODULES`. Subcommand modules never import this file, so there is no cycle.
A `PrepError` (any `UserError`) raised by `run` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from sam_train.cli import prep_clip, prep_convert, prep_formats, prep_teacher
from sam_train.cli.arguments import OneLineParser
from sam_train.errors import run_tool

# in the order `sam-prep --help` lists them
SUBCOMMAND_MODULES = (
    prep_convert,  # images, coco, sa1b, sample
    prep_clip,  # clip-embed
    prep_formats,  # masks, labelme, inspect
    prep_teacher,  # teacher-embed
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sam-prep",
        description="Turn image folders, COCO and SA-1B data into webdataset tar shards.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; a user's mistake (a `PrepError`, a missing input) is one line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        run_tool(f"sam-prep {args.command}", args.run, args)
    except KeyboardInterrupt:
        print("sam-prep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
