"""COCO segmentations (polygons, uncompressed and compressed RLE) to the one stored form:
compressed RLE with a string `counts`, through pycocotools so masks match `annToMask` exactly.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from data_prep.common import SkipSample
from sam_train.data.sam_samples import nearest_index


def to_rle(segmentation: object, h: int, w: int) -> dict:
    """Any COCO segmentation of an h x w image -> pycocotools compressed RLE (bytes counts).

    Raises SkipSample with the reason when it cannot be used (counted per annotation).
    """
    if isinstance(segmentation, list):
        return _polygons_to_rle(segmentation, h, w)
    if (
        not isinstance(segmentation, dict)
        or "counts" not in segmentation
        or "size" not in segmentation
    ):
        raise SkipSample("bad_segmentation", f"unknown segmentation {type(segmentation).__name__}")
    if list(segmentation["size"]) != [h, w]:
        raise SkipSample("rle_size_mismatch", f"RLE size {segmentation['size']} != image {[h, w]}")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE (crowd annotations)
        return mask_utils.frPyObjects(segmentation, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def _polygons_to_rle(polygons: list, h: int, w: int) -> dict:
    """Polygons with fewer than 3 points are dropped; all of them dropped -> skipped."""
    if polygons and not isinstance(polygons[0], list):
        polygons = [polygons]  # a single flat polygon
    good = [[float(v) for v in p] for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
    if not good:
        raise SkipSample(
            "polygon_too_few_points", f"{len(polygons)} polygon(s), none with 3+ points"
        )
    return mask_utils.merge(mask_utils.frPyObjects(good, h, w))


def rle_to_json(rle: dict) -> dict:
    """pycocotools RLE -> the stored JSON form {"size": [h, w], "counts": str}."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def json_to_rle(obj: dict) -> dict:
    """The stored JSON form -> pycocotools RLE (bytes counts)."""
    counts = obj["counts"]
    return {
        "size": list(obj["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Boolean masks [N, H, W] -> N compressed RLEs."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def decode_masks(rles: list[dict]) -> np.ndarray:
    """N compressed RLEs of one image -> boolean masks [N, H, W]."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def resize_masks(masks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of masks [N, H, W] -> [N, h, w]."""
    rows = nearest_index(masks.shape[1], h)
    cols = nearest_index(masks.shape[2], w)
    return masks[:, rows[:, None], cols[None, :]]


def resize_rle(rle: dict, h: int, w: int) -> dict:
    """Decode, resize (nearest), re-encode one RLE to an h x w image."""
    if list(rle["size"]) == [h, w]:
        return rle
    return encode_masks(resize_masks(decode_masks([rle]), h, w))[0]
