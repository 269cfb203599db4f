"""Predictions for pictures: one centre point and one box per mask, on a validation batch."""

from __future__ import annotations

import numpy as np
import torch

from sam_train.data.batch import SamBatch
from sam_train.metrics import center_points
from sam_train.models.sam.sam import Sam, upscale_logits
from sam_train.training.prompts import select_masks
from sam_train.viz.sam_masks import mask_panel


@torch.no_grad()
def one_prompt_panels(sam: Sam, batch: SamBatch, num_masks: int) -> list[list[np.ndarray]]:
    """Two rows of panels: the most confident mask for one centre point; the mask for one box."""
    was_training = sam.training
    sam.eval()
    targets = select_masks(batch, num_masks, generator=torch.Generator().manual_seed(0))
    k = min(num_masks, targets.num_masks)
    if k == 0:
        sam.train(was_training)
        return [[], []]
    masks, index = targets.masks[:k], targets.image_index[:k]
    boxes = targets.boxes[:k]
    emb = sam.embed_images(batch.images)
    size = masks.shape[-1]
    points = center_points(masks)[:, None]  # [k, 1, 2]
    labels = torch.ones(k, 1, dtype=torch.long, device=masks.device)
    logits, iou = sam.decode(emb, points=(points, labels), image_index=index)
    best = iou.argmax(1)
    point_pred = upscale_logits(logits, (size, size))[torch.arange(k), best] > sam.mask_threshold
    box_logits, _ = sam.decode(emb, boxes=boxes, image_index=index, multimask_output=False)
    box_pred = upscale_logits(box_logits, (size, size))[:, 0] > sam.mask_threshold
    sam.train(was_training)
    hw = batch.image_hw[index] if batch.image_hw is not None else torch.full((k, 2), size)
    top, bottom = [], []
    for i in range(k):
        image, h_w = batch.images[index[i]], tuple(hw[i].tolist())
        top.append(mask_panel(image, masks[i], point_pred[i], h_w, points[i], labels[i]))
        bottom.append(mask_panel(image, masks[i], box_pred[i], h_w, box=boxes[i]))
    return [top, bottom]
