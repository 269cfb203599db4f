"""`sam-prep`: turn image folders, COCO and SA-1B data into webdataset shards (once, in
parallel). The conversion logic lives in `data_prep/`; this file only parses arguments.

New subcommands register themselves with `@subcommand(name, help)`: the decorated function
receives the subparser to fill and returns the function that runs the parsed arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

Runner = Callable[[argparse.Namespace], None]
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


def subcommand(name: str, help: str) -> Callable:
    """Register a subcommand: `setup(parser) -> run(args)`."""

    def register(setup: Callable[[argparse.ArgumentParser], Runner]) -> Callable:
        SUBCOMMANDS[name] = (help, setup)
        return setup

    return register


def parse_bytes(text: str) -> int:
    """'500M', '1G', '2.5GB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 1G)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def _shard_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shards")
    g.add_argument(
        "--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)"
    )
    g.add_argument(
        "--maxsize",
        type=parse_bytes,
        default=None,
        help="bytes per shard at most, e.g. 1G (approximate)",
    )
    g.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes"
    )
    g.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="resize the longest side to at most this (masks too)",
    )
    g.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")


def _pixel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pixels (16-bit images, large images)")
    g.add_argument(
        "--normalize",
        default=None,
        help="map 16-bit/float images to 8 bits: percentile:1,99.8 | minmax | range:LO,HI "
        "(without it such images are skipped and counted)",
    )
    g.add_argument("--tile", type=int, default=None, help="cut images into SIZE x SIZE tiles")
    g.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tiles")
    g.add_argument(
        "--tile-min-area",
        type=int,
        default=16,
        help="drop mask pieces cut by a tile border with fewer pixels (default 16)",
    )


def _pixels(args: argparse.Namespace):
    from data_prep.pixels import Normalize
    from data_prep.records import PixelOptions

    return PixelOptions(
        args.max_side,
        args.quality,
        Normalize.parse(args.normalize) if args.normalize else None,
        args.tile,
        args.overlap,
        args.tile_min_area,
    )


def _options(args: argparse.Namespace):
    from data_prep.shard_writer import ShardOptions

    return ShardOptions(
        args.maxcount, args.maxsize, args.workers, args.prefix, not args.no_progress
    )


def _print_report(manifest: dict, out: str) -> None:
    from data_prep.shard_writer import report

    print(report(manifest))
    print(f"manifest: {os.path.join(out, 'manifest.json')}")


@subcommand("images", "image folder (recursive; jpg/png/webp/bmp/tif) -> stage-1 shards")
def _images(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("src", help="folder of images")
    p.add_argument("out", help="output shard folder")
    _shard_args(p)
    _pixel_args(p)

    def run(a: argparse.Namespace) -> None:
        from data_prep.images import convert_images

        _print_report(convert_images(a.src, a.out, _options(a), _pixels(a)), a.out)

    return run


@subcommand(
    "coco", "COCO or LVIS instances json + images -> stage-2 shards (RLE masks, category names)"
)
def _coco(p: argparse.ArgumentParser) -> Runner:
    p.add_argument(
        "--images", required=True, help="folder the json's file_name entries are relative to"
    )
    p.add_argument(
        "--annotations", required=True, help="COCO instances json, e.g. instances_train2017.json"
    )
    p.add_argument("out", help="output shard folder")
    _shard_args(p)
    _pixel_args(p)

    def run(a: argparse.Namespace) -> None:
        from data_prep.coco import convert_coco

        _print_report(convert_coco(a.images, a.annotations, a.out, _options(a), _pixels(a)), a.out)

    return run


@subcommand("sa1b", "SA-1B folder (sa_N.jpg + sa_N.json) -> stage-2 shards")
def _sa1b(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("src", help="folder with sa_*.jpg and sa_*.json")
    p.add_argument("out", help="output shard folder")
    _shard_args(p)
    _pixel_args(p)

    def run(a: argparse.Namespace) -> None:
        from data_prep.sa1b import convert_sa1b

        _print_report(convert_sa1b(a.src, a.out, _options(a), _pixels(a)), a.out)

    return run


@subcommand("sample", "the embedded sample dataset as shards (OUT/mae, OUT/sam/{train,val})")
def _sample(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the composited images")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument(
        "--variants",
        type=int,
        default=2,
        help="composites per photo (default 2); the ones past 2 all go to train, val is unchanged",
    )

    def run(a: argparse.Namespace) -> None:
        from data_prep.sample import build_sample

        built = build_sample(a.out, seed=a.seed, workers=a.workers, variants=a.variants)
        for name, manifest in built.items():
            print(f"{name}: {manifest['total']} samples in {len(manifest['shards'])} shards")

    return run


# registers clip-embed; masks, labelme, inspect
from sam_train.cli import prep_clip, prep_formats  # noqa: E402, F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-prep",
        description="Turn image folders, COCO and SA-1B data into webdataset tar shards.",
    )
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, setup) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=setup(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; a PrepError is printed as one line and exits with status 2."""
    from data_prep.common import PrepError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PrepError as err:
        print(f"sam-prep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sam-prep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # `python -m` runs this file as __main__; subcommand modules (clip-embed) register on the
    # importable sam_train.cli.prep, so run that module's main
    from sam_train.cli import prep as _prep

    sys.exit(_prep.main())
