"""`sam-prep images | coco | sa1b | sample`: the converters to shards. The work is in
`data_prep/`; this file only declares the arguments."""

from __future__ import annotations

import argparse

from sam_train.cli.prep_args import (
    add_pixel_args,
    add_shard_args,
    add_split_args,
    add_subcommand,
    pixel_options,
    print_report,
    shard_options,
)


def _run_images(a: argparse.Namespace) -> None:
    from data_prep.images import convert_images

    print_report(convert_images(a.src, a.out, shard_options(a), pixel_options(a)), a.out)


def _run_coco(a: argparse.Namespace) -> None:
    from data_prep.coco import convert_coco

    manifest = convert_coco(a.images, a.annotations, a.out, shard_options(a), pixel_options(a))
    print_report(manifest, a.out)


def _run_sa1b(a: argparse.Namespace) -> None:
    from data_prep.sa1b import convert_sa1b

    print_report(convert_sa1b(a.src, a.out, shard_options(a), pixel_options(a)), a.out)


def _run_sample(a: argparse.Namespace) -> None:
    from data_prep.sample import build_sample

    built = build_sample(a.out, seed=a.seed, workers=a.workers, variants=a.variants)
    for name, manifest in built.items():
        print(f"{name}: {manifest['total']} samples in {len(manifest['shards'])} shards")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register images, coco, sa1b and sample."""
    text = "image folder (recursive; any image suffix of data=images) -> stage-1 shards"
    p = add_subcommand(
        subparsers, "images", text, _run_images, "src: folder of images", "out: output shard folder"
    )
    add_shard_args(p)
    add_pixel_args(p)
    add_split_args(p)

    text = "COCO or LVIS instances json + images -> stage-2 shards (RLE masks, category names)"
    p = add_subcommand(subparsers, "coco", text, _run_coco, "out: output shard folder")
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help="folder the json's file_name entries are relative to",
    )
    p.add_argument(
        "--annotations", required=True, help="COCO instances json, e.g. instances_train2017.json"
    )
    add_shard_args(p)
    add_pixel_args(p)
    add_split_args(p)

    text = "SA-1B folder (sa_N.jpg + sa_N.json) -> stage-2 shards"
    p = add_subcommand(
        subparsers,
        "sa1b",
        text,
        _run_sa1b,
        "src: folder with sa_*.jpg and sa_*.json",
        "out: output shard folder",
    )
    add_shard_args(p)
    add_pixel_args(p)
    add_split_args(p)

    text = "the embedded sample dataset as shards (OUT/mae, OUT/sam/{train,val})"
    p = add_subcommand(subparsers, "sample", text, _run_sample, "out: output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the composited images")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument(
        "--variants",
        type=int,
        default=2,
        help="composites per photo (default 2); the ones past 2 all go to train, val is unchanged",
    )
