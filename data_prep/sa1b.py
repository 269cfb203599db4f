"""SA-1B layout (`sa_N.jpg` + `sa_N.json`, any folder depth) -> stage-2 shards.

SA-1B's per-image json is already the stored layout (compressed RLE per mask); the converter
checks each mask, renames `image_id` to `id`, adds `category: null` (SA-1B has no classes) and
resizes with the image when asked.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

from data_prep.common import SkipSample, list_files, unique_keys
from data_prep.records import (
    PixelOptions,
    Samples,
    load_source,
    planned_samples,
    stage2_samples,
)
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards


def _natural(path: Path) -> tuple:
    """sa_2 before sa_10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path)))


def encode_sa1b_sample(paths: tuple[str, str], pixels: PixelOptions) -> tuple[Samples, Counter]:
    """(jpg, json) paths -> [("", {"jpg": bytes, "json": bytes})], or one sample per tile."""
    img_path, ann_path = Path(paths[0]), Path(paths[1])
    try:
        raw = json.loads(ann_path.read_text())
        anns, meta = raw["annotations"], raw.get("image", {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SkipSample("annotation_unreadable", f"{ann_path}: {err}") from err
    src = load_source(img_path, pixels)
    h0, w0 = src.hw
    if (meta.get("width"), meta.get("height")) not in ((w0, h0), (None, None)):
        raise SkipSample(
            "image_size_mismatch", f"{img_path}: json says {meta.get('width')}x{meta.get('height')}"
        )
    image = {
        "id": meta.get("image_id", meta.get("id", img_path.stem)),
        "file_name": meta.get("file_name", img_path.name),
    }
    return stage2_samples(src, image, pixels, anns=anns)


def convert_sa1b(
    src: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    pixels: PixelOptions | None = None,
) -> dict:
    """Write the SA-1B images under `src` as shards in `out`; returns the manifest.

    An image without its json is skipped and counted as `annotation_missing`.
    """
    options, pixels = options or ShardOptions(), pixels or PixelOptions()
    src = Path(src).expanduser()
    images = sorted(list_files(src, (".jpg", ".jpeg"), "SA-1B image", out), key=_natural)
    pre, pairs = [], []  # pre: (input, reason, detail) of images skipped while listing
    for img in images:
        ann = img.with_suffix(".json")
        if ann.is_file():
            pairs.append((img, ann))
        else:
            pre.append((str(img), "annotation_missing", f"no {ann.name} beside it"))
    keys = unique_keys([str(p[0].relative_to(src)) for p in pairs])
    items = [
        Item(
            k,
            img.stat().st_size + ann.stat().st_size,
            (str(img), str(ann)),
            planned_samples(pixels, img),
            sources=(str(img), str(ann)),
        )
        for k, (img, ann) in zip(keys, pairs)
    ]
    encode = functools.partial(encode_sa1b_sample, pixels=pixels)
    args = {"kind": "sa1b", **pixels.content_args(), **options_dict(options)}
    return write_shards(items, encode, out, options, str(src.resolve()), args, pre_skipped=pre)
