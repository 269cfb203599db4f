"""`sam-prep masks | labelme | inspect`: the data people bring (mask files, label images,
labelme) and a look at the result. The work is in `data_prep.masks`, `data_prep.labelme` and
`data_prep.inspect_shards`; this file only declares the arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sam_train.cli.prep_args import (
    add_pixel_args,
    add_shard_args,
    add_split_args,
    add_subcommand,
    pixel_options,
    print_report,
    shard_options,
)


def _run_masks(a: argparse.Namespace) -> None:
    from data_prep.masks import convert_masks

    manifest = convert_masks(
        a.images,
        a.masks,
        a.out,
        shard_options(a),
        pixel_options(a),
        a.classes,
        a.instances,
        a.keep_empty,
    )
    print_report(manifest, a.out)


def _run_labelme(a: argparse.Namespace) -> None:
    from data_prep.labelme import convert_labelme

    manifest = convert_labelme(a.src, a.out, shard_options(a), pixel_options(a), a.keep_empty)
    print_report(manifest, a.out)


def _run_inspect(a: argparse.Namespace) -> None:
    from data_prep.inspect_shards import format_stats, shard_stats, write_overlay

    stats = shard_stats(a.shards)
    print(json.dumps(stats, indent=1) if a.json else format_stats(stats))
    if a.samples > 0 and stats["samples"]:
        from sam_train.data.remote import is_remote

        beside = Path("inspect.png") if is_remote(a.shards) else Path(a.shards) / "inspect.png"
        path = write_overlay(a.shards, a.overlay or beside, a.samples)
        print(f"overlay: {path}")


def _keep_empty_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-empty",
        action="store_true",
        help="also write images without masks (no annotations): stage 1 trains on them, the "
        "stage-2 reader skips them (default: left out and counted)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register masks, labelme and inspect."""
    text = (
        "images + mask files (instance label images, per-object masks, semantic label images "
        "with --classes) -> stage-2 shards"
    )
    p = add_subcommand(subparsers, "masks", text, _run_masks, "out: output shard folder")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images (recursive)")
    p.add_argument(
        "--masks",
        required=True,
        help="folder of masks mirroring --images: <stem>.png|tif (label image), "
        "<stem>/<k>.png or <stem>_<k>.png (one binary mask per object)",
    )
    p.add_argument(
        "--classes",
        default=None,
        help='class table (json {"1": "name"} or txt, one name per line from value 0): '
        "the label images are then semantic (values = class ids)",
    )
    p.add_argument(
        "--instances",
        choices=("connected", "class"),
        default="connected",
        help="with --classes: one object per connected component (default) or per class",
    )
    _keep_empty_arg(p)
    add_shard_args(p)
    add_pixel_args(p)
    add_split_args(p)

    text = "labelme json files (+ their images) -> stage-2 shards"
    p = add_subcommand(
        subparsers,
        "labelme",
        text,
        _run_labelme,
        "src: folder of labelme .json files (recursive)",
        "out: output shard folder",
    )
    _keep_empty_arg(p)
    add_shard_args(p)
    add_pixel_args(p)
    add_split_args(p)

    text = "shard folder -> counts, mask statistics, skips, and an overlay PNG"
    p = add_subcommand(
        subparsers,
        "inspect",
        text,
        _run_inspect,
        "shards: shard folder (with manifest.json), local or a URL (https://host/shards)",
    )
    p.add_argument(
        "--overlay",
        default=None,
        help="PNG of the first samples with their masks (default SHARDS/inspect.png)",
    )
    p.add_argument("--samples", type=int, default=4, help="samples drawn (default 4)")
    p.add_argument("--json", action="store_true", help="print the statistics as json")
