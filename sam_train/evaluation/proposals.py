"""Object-proposal recall of segment-everything masks (the SAM paper's AR@1000 protocol):
class-agnostic COCOeval on masks, average recall over IoU 0.5:0.95 with at most 100 / 1000
proposals per image, ranked by predicted IoU."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_train.automatic.mask_ops import encode_rle


class ProposalRecall:
    """Collects ground truth and proposals image by image; `compute` gives AR@100, AR@1000 and
    the mean number of masks per image."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []

    def update(self, gt_masks, proposals: list[dict]) -> None:
        """gt_masks: [G, h, w] bool tensor of one image; proposals: MaskGenerator records
        (`coco_rle`) of the same image."""
        h, w = gt_masks.shape[-2:]
        self._images.append(
            {
                "h": int(h),
                "w": int(w),
                "gt": encode_rle(gt_masks.bool().cpu()),
                "dt": [(r["segmentation"], r["predicted_iou"]) for r in proposals],
            }
        )

    def compute(self, gather: Callable[[list], list[list]] | None = None) -> dict[str, float]:
        images = [im for part in gather(self._images) for im in part] if gather else self._images
        if not images:
            return {}
        gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
        results = []
        for img_id, im in enumerate(images, start=1):
            gt["images"].append({"id": img_id, "height": im["h"], "width": im["w"]})
            for rle in im["gt"]:
                gt["annotations"].append(
                    {
                        "id": len(gt["annotations"]) + 1,
                        "image_id": img_id,
                        "category_id": 1,
                        "segmentation": rle,
                        "area": float(mask_utils.area(rle)),
                        "bbox": [0, 0, 1, 1],  # unused by segm evaluation
                        "iscrowd": 0,
                    }
                )
            for rle, score in im["dt"]:
                results.append(
                    {"image_id": img_id, "category_id": 1, "segmentation": rle, "score": score}
                )
        out = {"masks_per_image": float(np.mean([len(im["dt"]) for im in images]))}
        if not results or not gt["annotations"]:
            return {**out, "ar100": 0.0, "ar1000": 0.0}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
            ev.params.useCats = 0
            ev.params.maxDets = [1, 100, 1000]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {**out, "ar100": float(ev.stats[7]), "ar1000": float(ev.stats[8])}
