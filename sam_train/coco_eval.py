"""COCO mask AP of box-prompted masks, through pycocotools' COCOeval.

Protocol: every evaluated ground-truth mask is prompted with its tight ground-truth box; the
single-mask output is the detection, its predicted IoU the score, its category the ground
truth's. AP then measures mask quality and score calibration, not detection (the boxes are
given). Masks are compared in the model-input frame (resized image, padding cut off), over the
masks validation evaluates (`val_max_masks` per image, area filters), not every COCO instance.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_train.models.sam.sam import Sam, upscale_logits


def is_coco_like(category_ids: torch.Tensor) -> bool:
    """True when every mask has a category (COCO-style data, not SA-1B)."""
    return category_ids.numel() > 0 and bool((category_ids >= 0).all())


@torch.no_grad()
def box_prompt_predictions(
    sam: Sam,
    image_embeddings: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-mask predictions for box prompts.

    Args:
        sam: the model. image_embeddings: [B, C, h, w]. boxes: [K, 4] xyxy input pixels.
        image_index: [K] image of each box. size: side S of the input frame.

    Returns masks [K, S, S] bool and scores [K] (predicted IoU).
    """
    logits, iou = sam.decode(
        image_embeddings, boxes=boxes, image_index=image_index, multimask_output=False
    )  # [K, 1, 4h, 4w], [K, 1]
    masks = upscale_logits(logits.float(), (size, size))[:, 0] > sam.mask_threshold
    return masks, iou[:, 0].float()


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


class CocoMaskAP:
    """Collects box-prompted predictions image by image; `compute` runs COCOeval ('segm')."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []

    def update(
        self,
        gt_masks: torch.Tensor,
        pred_masks: torch.Tensor,
        scores: torch.Tensor,
        category_ids: torch.Tensor,
        image_index: torch.Tensor,
        image_hw: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            gt_masks, pred_masks: [K, S, S] bool. scores: [K]. category_ids: [K] long (>= 0).
            image_index: [K] image of each mask. image_hw: [K, 2] real image size in the frame.
        """
        gt, pred = gt_masks.bool().cpu().numpy(), pred_masks.bool().cpu().numpy()
        scores_l, cats = scores.float().cpu().tolist(), category_ids.cpu().tolist()
        size = gt.shape[-1]
        hw = image_hw.cpu().tolist() if image_hw is not None else [[size, size]] * len(gt)
        for b in image_index.unique().tolist():
            rows = (image_index == b).nonzero()[:, 0].tolist()
            h, w = hw[rows[0]]
            self._images.append(
                {
                    "h": h,
                    "w": w,
                    "gt": [(cats[i], _rle(gt[i, :h, :w])) for i in rows],
                    "dt": [(cats[i], _rle(pred[i, :h, :w]), scores_l[i]) for i in rows],
                }
            )

    def compute(self, gather: Callable[[list], list[list]] | None = None) -> dict[str, float]:
        """`coco_mask_ap` (AP@[.5:.95]) and `coco_mask_ap50`; {} when nothing was collected.

        Args:
            gather: returns every rank's list (e.g. `torch.distributed.all_gather_object`);
                None = this process only.
        """
        images = [im for part in gather(self._images) for im in part] if gather else self._images
        if not images:
            return {}
        gt, results = _coco_dicts(images)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {"coco_mask_ap": float(ev.stats[0]), "coco_mask_ap50": float(ev.stats[1])}


def _coco_dicts(images: list[dict]) -> tuple[dict, list[dict]]:
    """In-memory COCO ground truth and result list from the collected images."""
    gt = {"images": [], "annotations": [], "categories": []}
    results, cats = [], set()
    for img_id, im in enumerate(images, start=1):
        gt["images"].append({"id": img_id, "height": im["h"], "width": im["w"]})
        for cat, rle in im["gt"]:
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
            cats.add(cat)
        for cat, rle, score in im["dt"]:
            results.append(
                {"image_id": img_id, "category_id": cat, "segmentation": rle, "score": score}
            )
    gt["categories"] = [{"id": c, "name": str(c)} for c in sorted(cats)]
    return gt, results
