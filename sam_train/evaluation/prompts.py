"""Evaluations beyond validation's: one point at a random pixel inside each mask."""

from __future__ import annotations

import torch

from sam_train.metrics import mask_iou
from sam_train.models.sam.sam import Sam, upscale_logits


def random_interior_points(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly drawn pixel of each non-empty mask: [K, S, S] bool -> [K, 2] (x, y)."""
    flat = masks.flatten(1).float().cpu()  # [K, S*S]
    index = torch.multinomial(flat + (flat.sum(1, keepdim=True) == 0), 1, generator=generator)
    size = masks.shape[-1]
    xy = torch.cat([index % size, index // size], dim=1).float()  # [K, 2]
    return xy.to(masks.device)


@torch.no_grad()
def evaluate_random_point(
    sam: Sam,
    image_embeddings: torch.Tensor,
    gt_masks: torch.Tensor,
    image_index: torch.Tensor,
    image_hw: torch.Tensor | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """`iou_random_point_oracle` and `iou_random_point_confident` [K]: one foreground point at a
    random pixel of each mask, best of the 3 outputs and the one with the highest predicted IoU
    (as validation scores the centre point)."""
    k, size = gt_masks.shape[0], gt_masks.shape[-1]
    coords = random_interior_points(gt_masks, generator)[:, None]  # [K, 1, 2]
    labels = torch.ones(k, 1, dtype=torch.long, device=gt_masks.device)
    logits, iou_pred = sam.decode(
        image_embeddings, points=(coords, labels), image_index=image_index
    )
    pred = upscale_logits(logits.float(), (size, size)) > sam.mask_threshold  # [K, 3, S, S]
    if image_hw is not None:
        ar = torch.arange(size, device=pred.device)
        inside = (ar[None, :, None] < image_hw[:, 0, None, None]) & (
            ar[None, None, :] < image_hw[:, 1, None, None]
        )  # [K, S, S]
        pred = pred & inside[:, None]
    ious = mask_iou(pred, gt_masks.bool()[:, None])  # [K, 3]
    best = iou_pred.argmax(dim=1)
    return {
        "iou_random_point_oracle": ious.max(dim=1).values,
        "iou_random_point_confident": ious.gather(1, best[:, None])[:, 0],
    }
