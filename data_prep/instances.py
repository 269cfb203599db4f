"""Objects as bounding-box crops: the working form of masks read from label images, mask files
and labelme shapes, and of COCO masks on their way into tiles.

A 4096 x 4096 label image with 1,000 nuclei would be 16 GB as full-frame boolean masks; as
crops it is the size of the nuclei. Crops become COCO RLE (`crop_to_rle`) without ever
building the full frame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from data_prep.common import SkipSample
from data_prep.rle import decode_masks, to_rle


@dataclass
class Instance:
    """One object: mask [h, w] bool of its box, placed at (y, x) of the source image.
    meta: the stored annotation fields other than the mask (id, category_id, category, ...)."""

    mask: np.ndarray
    y: int
    x: int
    meta: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def tight(mask: np.ndarray, y: int, x: int) -> tuple[np.ndarray, int, int] | None:
    """Crop a mask to its nonzero box: (mask, y, x), or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return mask[r0:r1, c0:c1], y + int(r0), x + int(c0)


def label_instances(label: np.ndarray) -> list[tuple[int, np.ndarray, int, int]]:
    """Instance label image [H, W] (0 = background) -> [(value, mask crop, y, x)] by value.
    Any nonzero value is one object, also when its pixels are not connected."""
    from scipy import ndimage  # imported here: converters without label images skip its cost

    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    if label.dtype.kind not in "iu":
        raise SkipSample("mask_not_integer", f"{label.dtype} label image (needs integer values)")
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if lo >= 0 and hi <= 1 << 20:  # values are their own labels: one pass, no sort
        ids, values = label, None
    else:  # negative or huge ids: relabel 1..n by sorting once
        values, ids = np.unique(label, return_inverse=True)
        ids = ids.reshape(label.shape) + 1
    out = []
    for i, box in enumerate(ndimage.find_objects(ids), start=1):
        value = i if values is None else int(values[i - 1])
        if box is None or value == 0:
            continue
        out.append((value, ids[box] == i, box[0].start, box[1].start))
    return out


def connected_instances(
    mask: np.ndarray, y0: int = 0, x0: int = 0
) -> list[tuple[np.ndarray, int, int]]:
    """Boolean mask -> one (crop, y, x) per 8-connected component, in raster order."""
    from scipy import ndimage

    comps, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    out = []
    for i, box in enumerate(ndimage.find_objects(comps, n), start=1):
        out.append((comps[box] == i, y0 + box[0].start, x0 + box[1].start))
    return out


def crop_to_rle(mask: np.ndarray, y: int, x: int, hw: tuple[int, int]) -> dict:
    """A crop placed at (y, x) of an h x w frame -> pycocotools compressed RLE of the frame.
    Runs are read off the crop's columns (COCO RLE is column-major), so the frame is never built.
    """
    H, W = hw
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    d = np.diff(padded, axis=0).T  # [w, h + 1]: +1 where a run starts, -1 one past its end
    cols, rows = np.nonzero(d)  # column-major order, as RLE wants
    starts = (x + cols) * H + y + rows  # frame index of each boundary
    bounds = np.concatenate([[0], starts, [H * W]])
    counts = np.diff(bounds).tolist()  # zeros, ones, zeros, ... alternating
    return mask_utils.frPyObjects({"size": [H, W], "counts": counts}, H, W)


def instances_to_anns(instances: list[Instance], hw: tuple[int, int]) -> list[dict]:
    """Instances -> COCO-style annotations with RLE segmentations of the h x w frame."""
    return [
        {**inst.meta, "segmentation": crop_to_rle(inst.mask, inst.y, inst.x, hw)}
        for inst in instances
    ]


def anns_to_instances(
    anns: list[dict], hw: tuple[int, int], categories: dict
) -> tuple[list[Instance], Counter]:
    """COCO / SA-1B annotations -> instances (each mask decoded once, then cropped to its box);
    bad annotations counted by reason as `build_record` counts them."""
    out, skipped = [], Counter()
    keep = ("predicted_iou", "stability_score")
    for ann in anns:
        try:
            rle = to_rle(ann.get("segmentation"), *hw)
        except SkipSample as skip:
            skipped[skip.reason] += 1
            continue
        box = tight(decode_masks([rle])[0], 0, 0)
        if box is None:
            skipped["annotation_outside_image"] += 1
            continue
        cat_id = ann.get("category_id")
        meta = {
            "id": ann.get("id"),
            "category_id": int(cat_id) if cat_id is not None else -1,
            "category": categories.get(cat_id) if cat_id is not None else None,
            "iscrowd": int(ann.get("iscrowd", 0)),
            **{k: ann[k] for k in keep if k in ann},
        }
        out.append(Instance(*box, meta=meta))
    return out, skipped
