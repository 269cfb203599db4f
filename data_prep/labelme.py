"""labelme JSON files -> stage-2 shards (`sam-prep labelme DIR OUT`).

Shapes become objects the way labelme's own `shape_to_mask` draws them (PIL, filled, with the
outline): `polygon` (3+ points), `rectangle` (two corners), `circle` (centre and a point on
the rim), `mask` (a base64 PNG placed at its first point). Shapes sharing a `group_id` and a
label are one object (their union), as in labelme's instance export. `point(s)`, `line` and
`linestrip` have no area: ignored and counted. The image comes from `imagePath` (relative to
the json; else its file name beside the json, for paths written on another machine; else the
json's stem with an image suffix), else from the embedded `imageData`. Labels become category
names; category ids are 1.. in the sorted order of all labels seen (listed in the manifest).
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_prep.common import IMAGE_SUFFIXES, SkipSample, list_files, unique_keys
from data_prep.instances import Instance, tight
from data_prep.records import (
    PixelOptions,
    Samples,
    load_source,
    planned_samples,
    stage2_samples,
)
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards

_NO_AREA = {"point": "point", "points": "point", "line": "line", "linestrip": "line"}


def read_labelme(path: Path) -> dict:
    """The parsed json; SkipSample when it is not a labelme file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SkipSample("annotation_unreadable", f"{path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise SkipSample("not_labelme_json", f"{path}: no 'shapes' list")
    return data


def image_source(path: Path, data: dict) -> tuple[Path, bytes | None] | None:
    """(image path, embedded bytes or None) of one labelme file; None when neither exists."""
    rel = str(data.get("imagePath") or "").replace("\\", "/")
    # as written; its name beside the json (paths from another machine); the json's stem
    candidates = [path.parent / rel, path.parent / Path(rel).name] if rel else []
    candidates += [path.with_suffix(s) for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c, None
    if data.get("imageData"):
        try:
            raw = base64.b64decode(data["imageData"])
        except ValueError as err:
            raise SkipSample("image_unreadable", f"{path}: imageData: {err}") from err
        return Path(Path(rel).name or path.with_suffix(".png").name), raw
    return None


def shape_mask(shape: dict, hw: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
    """One area shape -> (mask crop, y, x) inside the h x w image; None when it has no pixel
    there. SkipSample(reason) for a shape that cannot be drawn."""
    kind = shape.get("shape_type") or "polygon"
    try:
        pts = np.asarray(shape.get("points") or [], dtype=np.float64).reshape(-1, 2)
    except ValueError as err:
        raise SkipSample("shape_bad_points", str(err)) from err
    if kind == "mask":
        return _mask_shape(shape, pts, hw)
    need = {"polygon": 3, "rectangle": 2, "circle": 2}.get(kind)
    if need is None:
        raise SkipSample("shape_type_unknown", str(kind))
    if len(pts) < need:
        raise SkipSample(f"{kind}_too_few_points", f"{len(pts)} point(s)")
    if kind == "circle":
        r = float(np.hypot(*(pts[1] - pts[0])))
        lo, hi = pts[0] - r, pts[0] + r
    else:
        lo, hi = pts.min(0), pts.max(0)
    # draw on a canvas covering the shape's box (clipped to the image), shifted by whole pixels
    x0, y0 = max(0, int(np.floor(lo[0])) - 1), max(0, int(np.floor(lo[1])) - 1)
    x1, y1 = min(hw[1], int(np.ceil(hi[0])) + 2), min(hw[0], int(np.ceil(hi[1])) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    p = pts - (x0, y0)
    if kind == "polygon":
        draw.polygon([tuple(v) for v in p], outline=1, fill=1)
    elif kind == "rectangle":
        (a, b), (c, d) = p.min(0), p.max(0)  # PIL wants the top-left corner first
        draw.rectangle([a, b, c, d], outline=1, fill=1)
    else:
        (cx, cy), r = p[0], float(np.hypot(*(pts[1] - pts[0])))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    return tight(np.asarray(canvas, dtype=bool), y0, x0)


def _mask_shape(shape: dict, pts: np.ndarray, hw: tuple[int, int]):
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, ValueError) as err:
        raise SkipSample("shape_mask_unreadable", str(err)) from err
    if not len(pts):
        raise SkipSample("mask_too_few_points", "a mask shape needs its top-left point")
    x, y = int(pts[0][0]), int(pts[0][1])
    ys, xs = max(0, -y), max(0, -x)
    mask = mask[ys : hw[0] - y, xs : hw[1] - x]
    return tight(mask, y + ys, x + xs) if mask.size else None


def union(parts: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, int, int]:
    """Several (crop, y, x) -> one crop of their union."""
    y0, x0 = min(p[1] for p in parts), min(p[2] for p in parts)
    y1 = max(p[1] + p[0].shape[0] for p in parts)
    x1 = max(p[2] + p[0].shape[1] for p in parts)
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for m, y, x in parts:
        out[y - y0 : y - y0 + m.shape[0], x - x0 : x - x0 + m.shape[1]] |= m
    return out, y0, x0


def labelme_instances(
    shapes: list[dict], hw: tuple[int, int], category_ids: dict[str, int]
) -> tuple[list[Instance], Counter]:
    """Shapes -> instances (group_id + label merge shapes) and the shapes skipped, by reason."""
    groups: dict[object, list] = {}
    labels: dict[object, str] = {}
    skipped = Counter()
    for i, shape in enumerate(shapes):
        kind = shape.get("shape_type") or "polygon"
        if kind in _NO_AREA:
            skipped[f"shape_{_NO_AREA[kind]}_ignored"] += 1
            continue
        try:
            got = shape_mask(shape, hw)
        except SkipSample as skip:
            skipped[skip.reason] += 1
            continue
        if got is None:
            skipped["shape_outside_image"] += 1
            continue
        label = str(shape.get("label"))
        gid = shape.get("group_id")
        key = ("group", label, gid) if gid is not None else ("shape", i)
        groups.setdefault(key, []).append(got)
        labels[key] = label
    out = []
    for key, parts in groups.items():
        cid = category_ids.get(labels[key], -1)
        meta = {"id": len(out) + 1, "category_id": cid, "category": labels[key], "iscrowd": 0}
        out.append(Instance(*union(parts), meta=meta))
    return out, skipped


def encode_labelme_sample(
    payload: tuple[str, dict],
    category_ids: dict[str, int],
    pixels: PixelOptions,
    keep_empty: bool = False,
) -> tuple[Samples, Counter]:
    """(labelme json path, image meta) -> stored sample(s); keep_empty: write an image without
    shapes too (no annotations; for stage 1)."""
    path, image = Path(payload[0]), payload[1]
    data = read_labelme(path)
    found = image_source(path, data)
    if found is None:
        raise SkipSample("image_missing", f"{path}: imagePath {data.get('imagePath')!r}")
    src = load_source(found[0], pixels, raw=found[1])
    h, w = src.hw
    if (data.get("imageHeight") or h, data.get("imageWidth") or w) != (h, w):
        raise SkipSample(
            "image_size_mismatch",
            f"{path}: image {w}x{h}, json {data.get('imageWidth')}x{data.get('imageHeight')}",
        )
    objs, skipped = labelme_instances(data["shapes"], (h, w), category_ids)
    if not objs and not keep_empty:
        raise SkipSample("image_without_masks", f"{path}: no shape with an area", also=skipped)
    names = {v: k for k, v in category_ids.items()}
    samples, ann_skips = stage2_samples(
        src, image, pixels, instances=objs, categories=names, keep_empty=keep_empty
    )
    return samples, skipped + ann_skips


def convert_labelme(
    src: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    pixels: PixelOptions | None = None,
    keep_empty: bool = False,
) -> dict:
    """Write every labelme json under `src` (recursive) with its image as stage-2 shards.
    Files whose image is neither on disk nor embedded are counted (`image_missing`).
    keep_empty: also write images without any area shape (see `convert_masks`)."""
    options, pixels = options or ShardOptions(), pixels or PixelOptions()
    src = Path(src).expanduser()
    files = list_files(src, (".json",), "labelme json", exclude=out)
    pre, found, labels = [], [], set()  # pre: (input, reason, detail) skipped while listing
    for f in files:
        try:
            data = read_labelme(f)
            image = image_source(f, data)
            if image is None:
                raise SkipSample("image_missing")
        except SkipSample as skip:
            pre.append((str(f), skip.reason, skip.detail))
            continue
        labels.update(str(s.get("label")) for s in data["shapes"] if isinstance(s, dict))
        # the image's name as the record's file_name: relative to src when it is a file there
        on_disk = image[1] is None and image[0].resolve().is_relative_to(src.resolve())
        name = str(image[0].resolve().relative_to(src.resolve())) if on_disk else image[0].name
        hw = (data.get("imageHeight"), data.get("imageWidth"))
        count = planned_samples(
            pixels, image[0] if image[1] is None else None, hw if all(hw) else None
        )
        sources = (str(f),) if image[1] is not None else (str(f), str(image[0]))
        found.append((f, name, count, sources))
    category_ids = {name: i for i, name in enumerate(sorted(labels), start=1)}
    keys = unique_keys([str(f.relative_to(src)) for f, *_ in found])
    items = [
        Item(k, f.stat().st_size, (str(f), {"id": k, "file_name": name}), count, sources)
        for k, (f, name, count, sources) in zip(keys, found)
    ]
    encode = functools.partial(
        encode_labelme_sample, category_ids=category_ids, pixels=pixels, keep_empty=keep_empty
    )
    args = {
        "kind": "labelme",
        "categories": {str(i): n for n, i in category_ids.items()},
        **({"keep_empty": True} if keep_empty else {}),  # changes the content: rewrites shards
        **pixels.content_args(),
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(src.resolve()), args, pre_skipped=pre)
