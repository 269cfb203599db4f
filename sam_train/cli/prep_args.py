"""Arguments and output shared by the `sam-prep` subcommands: shard size and parallelism
options, and the report printed when a conversion finishes."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


def parse_bytes(text: str) -> int:
    """'500M', '1G', '2.5GB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 1G)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, text: str, run, *positional: str
) -> argparse.ArgumentParser:
    """A subcommand `name` described by `text` that calls `run(args)`: its positional
    arguments given as "name: help" strings; add the rest to the returned parser."""
    p = subparsers.add_parser(name, help=text, description=text)
    for arg in positional:
        arg_name, arg_help = arg.split(": ", 1)
        p.add_argument(arg_name, metavar=arg_name.upper(), help=arg_help)
    p.set_defaults(run=run)
    return p


def add_shard_args(p: argparse.ArgumentParser) -> None:
    """The options of every subcommand that writes shards."""
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
        "--overwrite",
        action="store_true",
        help="replace the shards of an output folder converted from other inputs "
        "(a rerun on the same inputs reconverts only what changed, without it)",
    )
    g.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="resize the longest side to at most this (masks too)",
    )
    g.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")


def add_split_args(p: argparse.ArgumentParser) -> None:
    """The validation split of the converters that read raw inputs."""
    g = p.add_argument_group("validation split (writes OUT/train and OUT/val)")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold out this fraction of the images (e.g. 0.1); the same ones on every rerun",
    )
    g.add_argument(
        "--val-images",
        default=None,
        help="hold out these inputs: a comma-separated list, or a text file with one per line "
        "(paths relative to the input folder, with or without extension)",
    )


def val_keys(spec: str | None) -> tuple[str, ...]:
    """--val-images (a list or a file of names) as sample keys."""
    from data_prep.common import sample_key

    if not spec:
        return ()
    path = Path(spec).expanduser()
    names = path.read_text().splitlines() if path.is_file() else spec.split(",")
    return tuple(dict.fromkeys(sample_key(n.strip()) for n in names if n.strip()))


def add_pixel_args(p: argparse.ArgumentParser) -> None:
    """The options of every converter for 16-bit and large images."""
    g = p.add_argument_group("pixels (16-bit, float, single-channel and large images)")
    g.add_argument(
        "--normalize",
        default=None,
        help="map non-8-bit images to 0..255: percentile:1,99.8 | minmax | range:LO,HI "
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


def pixel_options(args: argparse.Namespace):
    """The parsed pixel options (and --max-side, --quality) as `PixelOptions`; a PrepError
    for an impossible combination."""
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


def shard_options(args: argparse.Namespace):
    """The parsed shard options as the writer's `ShardOptions`."""
    from data_prep.shard_writer import ShardOptions

    return ShardOptions(
        args.maxcount,
        args.maxsize,
        args.workers,
        args.prefix,
        not args.no_progress,
        args.overwrite,
        getattr(args, "val_fraction", 0.0),
        val_keys(getattr(args, "val_images", None)),
    )


def print_report(manifest: dict, out: str) -> None:
    """Counts by reason of what was written and skipped, and where the manifest is."""
    from data_prep.shard_writer import report

    print(report(manifest))
    for split in manifest.get("splits", {"": None}):
        print(f"manifest: {os.path.join(out, split, 'manifest.json')}")
