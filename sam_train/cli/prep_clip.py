"""`sam-prep clip-embed`: add precomputed CLIP region embeddings to stage-2 shards. The work
is in `data_prep.clip_embed`."""

from __future__ import annotations

import argparse

from sam_train.cli.prep_args import add_shard_args, add_subcommand, print_report, shard_options


def _run(a: argparse.Namespace) -> None:
    from data_prep.clip_embed import convert_clip_embed
    from data_prep.common import PrepError
    from sam_train.models.sam.text import ClipLoadError

    try:
        manifest = convert_clip_embed(
            a.src,
            a.out,
            a.clip,
            a.pretrained,
            a.image_size,
            a.margin,
            a.background,
            a.min_area,
            a.cache_dir,
            shard_options(a),
        )
    except ClipLoadError as err:
        raise PrepError(str(err)) from err
    print_report(manifest, a.out)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register clip-embed."""
    text = "stage-2 shards -> the same shards plus CLIP region embeddings (clip.npy)"
    p = add_subcommand(
        subparsers,
        "clip-embed",
        text,
        _run,
        "src: stage-2 shard folder (made by sam-prep coco|sa1b|sample)",
        "out: output shard folder (train with data.path=OUT)",
    )
    p.add_argument("--clip", default="ViT-B-32", help="open_clip model name or model-config .json")
    p.add_argument(
        "--pretrained",
        default="openai",
        help="open_clip pretrained tag, or a local checkpoint file (offline machines)",
    )
    p.add_argument("--cache-dir", default=None, help="open_clip weight cache")
    p.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="the model input size (model.image_size) the regions are cropped at",
    )
    p.add_argument("--margin", type=float, default=0.25, help="prompt.text.crop_margin")
    p.add_argument("--background", type=float, default=0.5, help="prompt.text.crop_background")
    p.add_argument("--min-area", type=int, default=10000, help="prompt.text.min_region_area")
    add_shard_args(p)
