"""Stage-2 shards + a teacher SAM's image embeddings (`sam-prep teacher-embed`).

Every sample of SRC is copied to OUT with one more member, `teacher.npy`: float16 [C, h, w],
the teacher's image embeddings of the image as training prepares it at `image_size` (longest
side resized, normalised, padded to the square, no flip), so `stage=distill` can read its
targets instead of running the teacher each step. Training skips the horizontal flip of
samples that carry them (a flipped image has other embeddings).

Sharded, parallel and resumable through `data_prep.add_member`, like `clip-embed`.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from data_prep.add_member import copy_with_member, npy_bytes, worker_threads
from data_prep.common import PrepError
from data_prep.shard_writer import ShardOptions


@functools.lru_cache(maxsize=1)
def _teacher(path: str, threads: int):
    from sam_train.models.teacher import load_teacher

    if threads > 0:
        torch.set_num_threads(threads)
    return load_teacher(path)


def teacher_member(
    image: torch.Tensor, masks: torch.Tensor, anns: list[dict], teacher: str, threads: int = 0
) -> tuple[bytes, Counter]:
    """`teacher.npy` of one sample: the teacher's embeddings [C, h, w] in float16."""
    embeddings = _teacher(teacher, threads).embeddings(image[None])[0]  # [C, h, w]
    return npy_bytes(embeddings.numpy().astype(np.float16)), Counter()


def convert_teacher_embed(
    src: str | Path,
    out: str | Path,
    teacher: str | Path,
    image_size: int = 1024,
    options: ShardOptions | None = None,
) -> dict:
    """Copy the stage-2 shards of `src` to `out` with `teacher.npy` per sample; the manifest.

    image_size: the student's `model.image_size` (the manifest records it and the teacher)."""
    from sam_train.weights.checkpoints import WeightsError, file_sha256

    options = options or ShardOptions()
    teacher = str(Path(teacher).resolve())
    try:
        _teacher(teacher, 0)  # a file that is no SAM fails here, before any worker starts
    except WeightsError as err:
        raise PrepError(str(err)) from err
    make = functools.partial(teacher_member, teacher=teacher, threads=worker_threads(options))
    args = {"kind": "teacher_embed", "teacher": teacher, "teacher_sha256": file_sha256(teacher)}
    return copy_with_member(src, out, "teacher.npy", image_size, make, options, args)
