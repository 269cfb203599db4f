"""Raw per-image annotations (COCO or SA-1B) -> the stored stage-2 record:

    {"image": {"width", "height", "id", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h],
                      "area", "category_id", "category", "iscrowd", ...}]}

Masks and boxes follow the stored image: when it was resized, each RLE is decoded, resized
(nearest) and re-encoded, and the box is scaled. Bad annotations are dropped and counted.
"""

from __future__ import annotations

from collections import Counter

from pycocotools import mask as mask_utils

from data_prep.common import SkipSample
from data_prep.rle import resize_rle, rle_to_json, to_rle

# Extra SA-1B fields worth keeping for training (quality scores of the automatic masks).
KEEP_EXTRA = ("predicted_iou", "stability_score")
# LVIS image fields: categories checked absent / not exhaustively annotated (negatives for text)
KEEP_IMAGE_EXTRA = ("neg_category_ids", "not_exhaustive_category_ids")


def convert_annotation(
    ann: dict, src_hw: tuple[int, int], dst_hw: tuple[int, int], categories: dict[int, str]
) -> dict:
    """One raw annotation -> stored form; SkipSample(reason) when unusable."""
    rle = to_rle(ann.get("segmentation"), *src_hw)
    if mask_utils.area(rle) == 0:
        raise SkipSample(
            "annotation_outside_image", f"annotation {ann.get('id')} has no pixel inside"
        )
    scale = dst_hw[1] / src_hw[1]
    if dst_hw != src_hw:
        rle = resize_rle(rle, *dst_hw)
        if mask_utils.area(rle) == 0:
            raise SkipSample("annotation_vanished_in_resize", f"annotation {ann.get('id')}")
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        bbox = mask_utils.toBbox(rle).tolist()
    else:
        bbox = [round(float(v) * scale, 2) for v in bbox]
    cat_id = ann.get("category_id")
    out = {
        "id": ann.get("id"),
        "segmentation": rle_to_json(rle),
        "bbox": bbox,
        "area": int(mask_utils.area(rle)),
        "category_id": int(cat_id) if cat_id is not None else -1,
        "category": categories.get(cat_id) if cat_id is not None else None,
        "iscrowd": int(ann.get("iscrowd", 0)),
    }
    out.update({k: ann[k] for k in KEEP_EXTRA if k in ann})
    return out


def build_record(
    image: dict,
    anns: list[dict],
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    categories: dict[int, str],
    allow_empty: bool = False,
) -> tuple[dict, Counter]:
    """The stored record of one image and the counts of its dropped annotations.

    image: {"id", "file_name"}; width/height are taken from dst_hw (the stored image).
    Raises SkipSample("no_valid_annotations") when nothing is left (useless for stage 2),
    unless `allow_empty`.
    """
    kept, skipped = [], Counter()
    for ann in anns:
        try:
            kept.append(convert_annotation(ann, src_hw, dst_hw, categories))
        except SkipSample as skip:
            skipped[skip.reason] += 1
    if not kept and not allow_empty:
        raise SkipSample("no_valid_annotations", str(image.get("file_name")), also=skipped)
    meta = {
        "width": dst_hw[1],
        "height": dst_hw[0],
        "id": image.get("id"),
        "file_name": image.get("file_name"),
        **{k: image[k] for k in KEEP_IMAGE_EXTRA if k in image},
    }
    return {"image": meta, "annotations": kept}, skipped
