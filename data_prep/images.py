"""Image folder (recursive; jpg/png/webp) -> stage-1 shards, one `jpg` or `png` per sample."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

from data_prep.common import IMAGE_SUFFIXES, encode_image, list_files, unique_keys
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards


def encode_image_sample(
    path: str, max_side: int | None, quality: int
) -> tuple[dict[str, bytes], Counter]:
    """One image file -> {ext: bytes}; SkipSample when it cannot be decoded."""
    img = encode_image(Path(path), max_side, quality)
    return {img.ext: img.data}, Counter()


def convert_images(
    src: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    max_side: int | None = None,
    quality: int = 95,
) -> dict:
    """Write every image under `src` as shards in `out`; returns the manifest.

    max_side: resize so the longest side is at most this many pixels (None keeps the size and,
        for jpg/png, the original bytes).
    quality: JPEG quality of re-encoded images.
    """
    options = options or ShardOptions()
    src = Path(src).expanduser()
    files = list_files(src, IMAGE_SUFFIXES, "image")
    keys = unique_keys([str(f.relative_to(src)) for f in files])
    items = [Item(k, f.stat().st_size, str(f)) for k, f in zip(keys, files)]
    encode = functools.partial(encode_image_sample, max_side=max_side, quality=quality)
    args = {"kind": "images", "max_side": max_side, "quality": quality, **options_dict(options)}
    return write_shards(items, encode, out, options, source=str(src.resolve()), content_args=args)
