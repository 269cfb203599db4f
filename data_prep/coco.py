"""COCO instances (polygons, uncompressed and compressed RLE) -> stage-2 shards with one
compressed-RLE mask per annotation and its category name.

Images without a usable annotation are skipped (`no_valid_annotations`): stage 2 needs masks.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from pathlib import Path

from data_prep.annotations import build_record
from data_prep.common import PrepError, SkipSample, encode_image, unique_keys
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards


def load_coco(annotations: str | Path) -> dict:
    """Read a COCO instances json; a PrepError naming the file when it is missing or malformed."""
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise PrepError(
            f"COCO annotation file {str(path)!r} does not exist; pass --annotations "
            "path/to/instances_train.json (the COCO 'instances' json)"
        )
    try:
        coco = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PrepError(f"cannot read COCO annotation file {str(path)!r}: {err}") from err
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise PrepError(f"{str(path)!r} is not a COCO instances file (no 'images' list)")
    return coco


def encode_coco_sample(
    payload: tuple[str, dict, list[dict]],
    categories: dict[int, str],
    max_side: int | None,
    quality: int,
) -> tuple[dict[str, bytes], Counter]:
    """(image path, COCO image entry, its annotations) -> {"jpg"|"png": bytes, "json": bytes}."""
    path, image, anns = payload
    img = encode_image(Path(path), max_side, quality)
    (w0, h0), (w, h) = img.source_size, img.size
    if (image.get("width", w0), image.get("height", h0)) != (w0, h0):
        raise SkipSample(
            "image_size_mismatch",
            f"{path}: {w0}x{h0} on disk, {image.get('width')}x{image.get('height')} in json",
        )
    record, skipped = build_record(image, anns, (h0, w0), (h, w), categories)
    return {img.ext: img.data, "json": json.dumps(record).encode()}, skipped


def convert_coco(
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    max_side: int | None = None,
    quality: int = 95,
) -> dict:
    """Write the COCO dataset (`annotations` json, image files under `images`) as shards in `out`.

    Images listed in the json but missing on disk are skipped and counted (`image_missing`).
    """
    options = options or ShardOptions()
    images = Path(images).expanduser()
    coco = load_coco(annotations)
    if not images.is_dir():
        raise PrepError(f"COCO image folder {str(images)!r} does not exist; pass --images DIR")
    if not coco["images"]:
        raise PrepError(f"{str(annotations)!r} lists no images; nothing to convert")
    categories = {c["id"]: c.get("name") for c in coco.get("categories", [])}
    by_image = defaultdict(list)
    for ann in coco.get("annotations", []):
        by_image[ann.get("image_id")].append(ann)
    entries = sorted(coco["images"], key=lambda im: str(im.get("file_name")))
    pre, found = Counter(), []
    for im in entries:
        path = images / str(im.get("file_name"))
        if path.is_file():
            found.append((path, im))
        else:
            pre["image_missing"] += 1
    keys = unique_keys([str(im.get("file_name")) for _, im in found])
    items = [
        Item(k, p.stat().st_size, (str(p), im, by_image.get(im.get("id"), [])))
        for k, (p, im) in zip(keys, found)
    ]
    encode = functools.partial(
        encode_coco_sample, categories=categories, max_side=max_side, quality=quality
    )
    args = {
        "kind": "coco",
        "annotations": str(Path(annotations).resolve()),
        "max_side": max_side,
        "quality": quality,
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(images.resolve()), args, pre_skipped=pre)
