"""Images + masks as files -> stage-2 shards (`sam-prep masks --images DIR --masks DIR OUT`).

For an image `IMAGES/<rel>/<stem>.<ext>` the masks are looked up under MASKS, first match wins:
  1. `MASKS/<rel>/<stem>.png|.tif|.tiff`  one label image, same size as the image, 0 background:
     an instance label image (each other value is one object, uint8/uint16/int32), or, with
     `classes`, a semantic label image (each value a class id, split into objects by
     8-connected components, or one object per class with `instances="class"`);
  2. `MASKS/<rel>/<stem>/<k>.png|.tif|.tiff`  a folder of binary masks, one object per file
     (any nonzero pixel is the object; k = the object's id, an integer);
  3. `MASKS/<rel>/<stem>_<k>.png|.tif|.tiff`  the same, flat.
Class names (from `classes`) go into each annotation's `category`.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.common import IMAGE_SUFFIXES, PrepError, SkipSample, list_files, unique_keys
from data_prep.instances import Instance, connected_instances, label_instances, tight
from data_prep.pixels import TIFF_SUFFIXES, channels_last
from data_prep.records import (
    PixelOptions,
    Samples,
    load_source,
    planned_samples,
    stage2_samples,
)
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards

MASK_SUFFIXES = (".png", ".tif", ".tiff")
_OBJECT = re.compile(r"^(?P<stem>.+?)_(?P<k>\d+)$")


def load_classes(path: str | Path) -> dict[int, str]:
    """Class table -> {pixel value: name}. `.json`: {"1": "cell", ...} or a list of names
    (index = value); `.txt`: one name per line (line number from 0 = value) or `VALUE NAME`
    lines. Value 0 is background whatever its name."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise PrepError(
            f"class table {str(path)!r} cannot be read ({err}); pass --classes FILE"
        ) from err
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
            table = dict(enumerate(raw)) if isinstance(raw, list) else raw
            return {int(k): str(v) for k, v in table.items() if int(k) != 0}
        lines = [ln.strip() for ln in text.splitlines()]
        pairs = [re.fullmatch(r"(\d+)[\s:,=]+(.+)", ln) for ln in lines if ln]
        if pairs and all(pairs):
            table = {int(m.group(1)): m.group(2).strip() for m in pairs}
        else:
            table = {i: name for i, name in enumerate(lines) if name}
        return {k: v for k, v in table.items() if k != 0}
    except (ValueError, TypeError, AttributeError) as err:
        raise PrepError(
            f"class table {str(path)!r} is not understood ({err}); use a json "
            '{"1": "name", ...} or a txt with one name per line (line 0 = background)'
        ) from err


def read_label(path: Path) -> np.ndarray:
    """A mask or label file's values as stored [H, W] (palette PNGs give their indices)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path)
        else:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("LA", "PA"):
                    img = img.getchannel(0)
                arr = np.asarray(img)
        if arr.ndim < 2 or arr.size == 0:  # a corrupt TIFF reads as no pages
            raise ValueError("no pixels (corrupt file?)")
        arr = channels_last(arr, path)
    except SkipSample as err:
        raise SkipSample("mask_unreadable", str(err)) from err
    except (OSError, UnidentifiedImageError, ValueError, RuntimeError) as err:
        raise SkipSample("mask_unreadable", f"{path}: {err}") from err
    if arr.ndim == 3:
        if not (arr == arr[:, :, :1]).all():
            raise SkipSample(
                "mask_not_single_channel", f"{path}: colour label images need one value per pixel"
            )
        arr = arr[:, :, 0]
    return arr


def find_masks(masks_root: Path) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """Scan the mask folder once: label images by `<rel>/<stem>`, object masks by the same."""
    labels, objects = {}, {}
    for p in sorted(masks_root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in MASK_SUFFIXES:
            continue
        stem = p.relative_to(masks_root).with_suffix("").as_posix()
        labels.setdefault(stem, p)
        parent, name = stem.rpartition("/")[0], p.stem
        if name.isdigit() and parent:  # <stem>/<k>.png
            objects.setdefault(parent, []).append((int(name), p))
        elif m := _OBJECT.match(p.stem):  # <stem>_<k>.png
            key = f"{parent}/{m['stem']}" if parent else m["stem"]
            objects.setdefault("flat:" + key, []).append((int(m["k"]), p))
    return labels, objects


def encode_masks_sample(
    payload: tuple[str, str, dict, object],
    pixels: PixelOptions,
    classes: dict[int, str] | None,
    instances: str,
    keep_empty: bool = False,
) -> tuple[Samples, Counter]:
    """(image path, layout, image meta, label path or [(k, path)] or None) -> stored sample(s).
    keep_empty: write images without objects too (no annotations; for stage 1)."""
    path, layout, image, masks = payload
    src = load_source(Path(path), pixels)
    skipped = Counter()
    if layout == "label":
        label = read_label(Path(masks))
        _check_size(label, src.hw, masks)
        if classes is None:
            objs = [Instance(m, y, x, _meta(v, -1, None)) for v, m, y, x in label_instances(label)]
        else:
            objs = _semantic(label, classes, instances, skipped)
    else:
        objs = []
        for k, p in masks or []:
            arr = read_label(Path(p))
            _check_size(arr, src.hw, p)
            box = tight(arr != 0, 0, 0)
            if box is None:
                skipped["mask_empty"] += 1
            else:
                objs.append(Instance(*box, meta=_meta(k, -1, None)))
    if not objs and not keep_empty:
        raise SkipSample("image_without_masks", f"{path}: no object in its masks", also=skipped)
    samples, ann_skips = stage2_samples(
        src, image, pixels, instances=objs, categories=classes, keep_empty=keep_empty
    )
    return samples, skipped + ann_skips


def _meta(obj_id: int, category_id: int, category: str | None) -> dict:
    return {"id": obj_id, "category_id": category_id, "category": category, "iscrowd": 0}


def _check_size(arr: np.ndarray, hw: tuple[int, int], path: object) -> None:
    if arr.shape[:2] != tuple(hw):
        raise SkipSample(
            "mask_size_mismatch",
            f"{path}: {arr.shape[1]}x{arr.shape[0]}, its image {hw[1]}x{hw[0]}",
        )


def _semantic(
    label: np.ndarray, classes: dict[int, str], instances: str, skipped: Counter
) -> list[Instance]:
    """Semantic label image -> instances: per class value, its connected components (or all
    of its pixels as one object). Values missing from the table are counted and ignored."""
    out = []
    for value, crop, y, x in label_instances(label):
        if value not in classes:
            skipped["class_not_in_table"] += 1
            continue
        parts = connected_instances(crop, y, x) if instances == "connected" else [(crop, y, x)]
        for mask, py, px in parts:
            out.append(Instance(mask, py, px, _meta(len(out) + 1, value, classes[value])))
    return out


def _mask_files(layout: str, masks: str | list | None) -> tuple[str, ...]:
    """The mask files one image is read with: its label image, or its per-object masks."""
    if layout == "label":
        return (masks,)
    return tuple(path for _, path in masks or ())


def convert_masks(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    options: ShardOptions | None = None,
    pixels: PixelOptions | None = None,
    classes: str | Path | None = None,
    instances: str = "connected",
    keep_empty: bool = False,
) -> dict:
    """Write every image under `images` with its masks under `masks` as stage-2 shards.

    classes: a class table; the label images are then semantic (values = class ids).
    instances: with classes, "connected" (one object per connected component) or "class"
        (one object per class present).
    keep_empty: also write images without any object, with no annotations (counted as
        `kept_without_masks`: stage 1 reads them, the stage-2 reader skips them), instead of
        leaving them out (counted as `image_without_masks`).
    """
    options, pixels = options or ShardOptions(), pixels or PixelOptions()
    if instances not in ("connected", "class"):
        raise PrepError(f"--instances {instances!r}: use connected or class")
    images, masks = Path(images).expanduser(), Path(masks).expanduser()
    files = list_files(images, IMAGE_SUFFIXES, "image", exclude=out)
    if not masks.is_dir():
        raise PrepError(f"mask folder {str(masks)!r} does not exist; pass --masks DIR")
    table = load_classes(classes) if classes else None
    labels, objects = find_masks(masks)
    pre, found = [], []  # pre: (input, reason, detail) of images skipped while listing
    for f in files:
        stem = f.relative_to(images).with_suffix("").as_posix()
        if stem in labels:
            found.append((f, "label", str(labels[stem])))
        elif table is None and (objs := objects.get(stem) or objects.get("flat:" + stem)):
            found.append((f, "objects", [(k, str(p)) for k, p in sorted(objs)]))
        elif keep_empty:
            found.append((f, "none", None))
        else:
            pre.append((str(f), "image_without_masks", ""))
    rels = [str(f.relative_to(images)) for f, _, _ in found]
    keys = unique_keys(rels)
    items = [
        Item(
            k,
            f.stat().st_size,
            (str(f), layout, {"id": k, "file_name": rel}, m),
            planned_samples(pixels, f),
            sources=(str(f), *_mask_files(layout, m)),
        )
        for k, rel, (f, layout, m) in zip(keys, rels, found)
    ]
    encode = functools.partial(
        encode_masks_sample,
        pixels=pixels,
        classes=table,
        instances=instances,
        keep_empty=keep_empty,
    )
    args = {
        "kind": "masks",
        "masks": str(masks.resolve()),
        "classes": {str(k): v for k, v in sorted(table.items())} if table else None,
        "instances": instances if table else "label",
        **({"keep_empty": True} if keep_empty else {}),  # changes the content: rewrites shards
        **pixels.content_args(),
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(images.resolve()), args, pre_skipped=pre)
