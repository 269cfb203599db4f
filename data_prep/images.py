"""Image folder (recursive; jpg/png/webp/bmp/tif) -> stage-1 shards, one `jpg` or `png` per
sample (or per tile with `--tile`)."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

from data_prep.common import IMAGE_SUFFIXES, list_files, unique_keys
from data_prep.records import (
    PixelOptions,
    Samples,
    load_source,
    planned_samples,
    stage1_samples,
)
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards


def encode_image_sample(path: str, pixels: PixelOptions) -> tuple[Samples, Counter]:
    """One image file -> its sample(s); SkipSample when it cannot be decoded."""
    src = load_source(Path(path), pixels)
    return stage1_samples(src, Path(path).name, pixels), Counter()


def convert_images(
    src: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    pixels: PixelOptions | None = None,
) -> dict:
    """Write every image under `src` as shards in `out`; returns the manifest.

    pixels: resizing, 16-bit mapping and tiling (default: keep size and, for 8-bit jpg/png,
        the original bytes).
    """
    options, pixels = options or ShardOptions(), pixels or PixelOptions()
    src = Path(src).expanduser()
    files = list_files(src, IMAGE_SUFFIXES, "image", exclude=out)
    keys = unique_keys([str(f.relative_to(src)) for f in files])
    items = [
        Item(k, f.stat().st_size, str(f), planned_samples(pixels, f), sources=(str(f),))
        for k, f in zip(keys, files)
    ]
    encode = functools.partial(encode_image_sample, pixels=pixels)
    args = {"kind": "images", **pixels.content_args(), **options_dict(options)}
    return write_shards(items, encode, out, options, source=str(src.resolve()), content_args=args)
