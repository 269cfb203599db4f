"""`sam-prep teacher-embed`: add a teacher SAM's image embeddings to stage-2 shards, for
`stage=distill` without a teacher forward per step. The work is in `data_prep.teacher_embed`."""

from __future__ import annotations

import argparse

from sam_train.cli.prep_args import add_shard_args, add_subcommand, print_report, shard_options


def _run(a: argparse.Namespace) -> None:
    from data_prep.teacher_embed import convert_teacher_embed

    manifest = convert_teacher_embed(a.src, a.out, a.teacher, a.image_size, shard_options(a))
    print_report(manifest, a.out)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register teacher-embed."""
    text = "stage-2 shards -> the same shards plus a teacher SAM's image embeddings (teacher.npy)"
    p = add_subcommand(
        subparsers,
        "teacher-embed",
        text,
        _run,
        "src: stage-2 shard folder (made by sam-prep coco|sa1b|sample)",
        "out: output shard folder (train with data.path=OUT)",
    )
    p.add_argument(
        "--teacher",
        required=True,
        metavar="CHECKPOINT",
        help="the teacher: any SAM checkpoint sam_train reads",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="the student's model.image_size (images are prepared as training prepares them)",
    )
    add_shard_args(p)
