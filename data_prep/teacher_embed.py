"""Stage-2 shards + a teacher SAM's image embeddings (`sam-prep teacher-embed`).

Every sample of SRC is copied to OUT with one more member, `teacher.npy`: float16 [C, h, w],
the teacher's image embeddings of the image as training prepares it at `image_size` (longest
side resized, normalised, padded to the square, no flip), so `stage=distill` can read its
targets instead of running the teacher each step. Training skips the horizontal flip of
samples that carry them (a flipped image has other embeddings).

Sharded, parallel and resumable through `data_prep.shard_writer`, like `clip-embed`.
"""

from __future__ import annotations

import functools
import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from data_prep.clip_embed import model_input, read_shard
from data_prep.common import PrepError, SkipSample
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards


@functools.lru_cache(maxsize=1)
def _teacher(path: str, threads: int):
    from sam_train.models.teacher import load_teacher

    if threads > 0:
        torch.set_num_threads(threads)
    return load_teacher(path)


def encode_teacher_sample(
    payload: tuple[str, str], teacher: str, image_size: int, threads: int = 0
) -> tuple[dict[str, bytes], Counter]:
    """(shard url, key) -> the sample's members plus `teacher.npy`."""
    url, key = payload
    files = dict(read_shard(url)[key])
    try:
        image, _, _ = model_input(files, image_size)
    except (KeyError, ValueError, OSError) as err:
        raise SkipSample("sample_unreadable", f"{url}:{key}: {err}") from err
    embeddings = _teacher(teacher, threads).embeddings(image[None])[0]  # [C, h, w]
    buf = io.BytesIO()
    np.save(buf, embeddings.numpy().astype(np.float16), allow_pickle=False)
    files["teacher.npy"] = buf.getvalue()
    return files, Counter()


def convert_teacher_embed(
    src: str | Path,
    out: str | Path,
    teacher: str | Path,
    image_size: int = 1024,
    options: ShardOptions | None = None,
) -> dict:
    """Copy the stage-2 shards of `src` to `out` with `teacher.npy` per sample; the manifest.

    image_size: the student's `model.image_size` (the manifest records it and the teacher)."""
    from sam_train.data.shards import resolve_shards
    from sam_train.weights.checkpoints import WeightsError, file_sha256

    options = options or ShardOptions()
    teacher = str(Path(teacher).resolve())
    try:
        _teacher(teacher, 0)  # a file that is no SAM fails here, before any worker starts
        urls, _ = resolve_shards(str(src))
    except (WeightsError, FileNotFoundError) as err:
        raise PrepError(str(err)) from err
    items = []
    for url in urls:
        with tarfile.open(url) as tar:
            names = [m.name for m in tar if m.isfile()]
        keys = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        items += [Item(k, 1, (url, k), sources=(url,)) for k in keys]
    threads = max(1, torch.get_num_threads() // max(options.workers, 1))
    encode = functools.partial(
        encode_teacher_sample,
        teacher=teacher,
        image_size=image_size,
        threads=threads if options.workers > 1 else 0,
    )
    args = {
        "kind": "teacher_embed",
        "teacher": teacher,
        "teacher_sha256": file_sha256(teacher),
        "image_size": image_size,
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(Path(src).resolve()), args)
