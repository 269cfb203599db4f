"""COCO instances (polygons, uncompressed and compressed RLE) -> stage-2 shards with one
compressed-RLE mask per annotation and its category name. LVIS json files are read the same way.

Images without a usable annotation are skipped (`no_valid_annotations`): stage 2 needs masks.

LVIS (v0.5 / v1) differs from COCO in three ways this reader handles: images carry `coco_url`
instead of `file_name` (the file is looked up as `<split>/<name>` under --images, e.g.
`train2017/000000391895.jpg`, then as `<name>`); categories carry `synonyms`, `def`,
`frequency` (the stored `category` is the `name`, e.g. `aerosol_can`); images carry
`neg_category_ids` and `not_exhaustive_category_ids`, kept in the stored image record.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from pathlib import Path

from data_prep.common import PrepError, SkipSample, unique_keys
from data_prep.records import (
    PixelOptions,
    Samples,
    load_source,
    planned_samples,
    stage2_samples,
)
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


def image_file(images: Path, image: dict) -> tuple[str, Path | None]:
    """(file name relative to `images`, its path when it exists) of one image entry:
    `file_name` (COCO) or the last parts of `coco_url` (LVIS)."""
    if image.get("file_name"):
        names = [str(image["file_name"])]
    elif image.get("coco_url"):
        parts = str(image["coco_url"]).rstrip("/").split("/")
        names = ["/".join(parts[-2:]), parts[-1]]
    else:
        return str(image.get("id")), None
    for name in names:
        if (images / name).is_file():
            return name, images / name
    return names[0], None


def _hw(image: dict) -> tuple[int, int] | None:
    h, w = image.get("height"), image.get("width")
    return (int(h), int(w)) if h and w else None


def encode_coco_sample(
    payload: tuple[str, dict, list[dict]], categories: dict[int, str], pixels: PixelOptions
) -> tuple[Samples, Counter]:
    """(image path, COCO image entry, its annotations) -> [("", {"jpg"|"png", "json"})], or one
    sample per tile."""
    path, image, anns = payload
    src = load_source(Path(path), pixels)
    h0, w0 = src.hw
    if (image.get("width", w0), image.get("height", h0)) != (w0, h0):
        raise SkipSample(
            "image_size_mismatch",
            f"{path}: {w0}x{h0} on disk, {image.get('width')}x{image.get('height')} in json",
        )
    return stage2_samples(src, image, pixels, anns=anns, categories=categories)


def convert_coco(
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    pixels: PixelOptions | None = None,
) -> dict:
    """Write the COCO (or LVIS) dataset (`annotations` json, image files under `images`) as
    shards in `out`. Images listed in the json but missing on disk are skipped and counted
    (`image_missing`)."""
    options, pixels = options or ShardOptions(), pixels or PixelOptions()
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
    pre, found = [], []  # pre: (input, reason, detail) of images skipped while listing
    for im in coco["images"]:
        name, path = image_file(images, im)
        if path is None:
            pre.append((str(images / name), "image_missing", "listed in the json, not on disk"))
        else:
            found.append((name, path, {**im, "file_name": name}))
    found.sort(key=lambda f: f[0])
    keys = unique_keys([name for name, _, _ in found])
    items = [
        Item(
            k,
            p.stat().st_size,
            (str(p), im, by_image.get(im.get("id"), [])),
            planned_samples(pixels, p, _hw(im)),
            sources=(str(p),),
        )
        for k, (_, p, im) in zip(keys, found)
    ]
    encode = functools.partial(encode_coco_sample, categories=categories, pixels=pixels)
    args = {
        "kind": "coco",
        "annotations": str(Path(annotations).resolve()),
        "categories": {str(i): n for i, n in sorted(categories.items(), key=str)},
        **pixels.content_args(),
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(images.resolve()), args, pre_skipped=pre)
