"""Segmentation metrics for promptable models: IoU, one-point / one-box mIoU, click curves, NoC.

Clicks follow the interactive-segmentation protocol (RITM, SAM): the first click at the centre
of the object (the pixel farthest from its boundary), each next one at the centre of the larger
error region (false negatives -> foreground click, false positives -> background click).
Distances come from `scipy.ndimage.distance_transform_edt` (scipy ships with scikit-image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from sam_train.data.batch import image_regions
from sam_train.models.sam.sam import Sam, upscale_logits


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks [..., H, W] -> [...]; 1 when both are empty."""
    pred, gt = pred.bool().flatten(-2), gt.bool().flatten(-2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _farthest_from_boundary(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """(x, y) of the pixel of `region` [H, W] farthest from its boundary (image border counts
    as boundary), and that distance (0 when the region is empty)."""
    if not region.any():
        return (0, 0), 0.0
    dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (int(x), int(y)), float(dist[y, x])


def center_points(masks: torch.Tensor) -> torch.Tensor:
    """One point per mask at its centre (distance-transform maximum): [N, H, W] -> [N, 2] (x, y)."""
    masks_np = masks.bool().cpu().numpy()
    pts = [_farthest_from_boundary(m)[0] for m in masks_np]
    return torch.tensor(pts, dtype=torch.float32, device=masks.device).reshape(-1, 2)


def next_clicks(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrective click per mask at the centre of the larger error region.

    pred, gt: [N, H, W] bool. Returns points [N, 2] (x, y) and labels [N] (1 where the click
    marks missed foreground, 0 where it marks a false positive).
    """
    pred_np, gt_np = pred.bool().cpu().numpy(), gt.bool().cpu().numpy()
    pts, labels = [], []
    for p, g in zip(pred_np, gt_np):
        fn_pt, fn_d = _farthest_from_boundary(g & ~p)
        fp_pt, fp_d = _farthest_from_boundary(p & ~g)
        pts.append(fn_pt if fn_d >= fp_d else fp_pt)
        labels.append(1 if fn_d >= fp_d else 0)
    return (
        torch.tensor(pts, dtype=torch.float32, device=pred.device).reshape(-1, 2),
        torch.tensor(labels, dtype=torch.long, device=pred.device),
    )


def number_of_clicks(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """NoC: clicks needed to reach `threshold` IoU per mask, from a curve [N, C] (IoU after
    1..C clicks); C when never reached. Returns [N] float."""
    reached = ious >= threshold
    first = reached.float().argmax(dim=1) + 1
    return torch.where(reached.any(dim=1), first, torch.full_like(first, ious.shape[1])).float()


@torch.no_grad()
def evaluate_prompts(
    sam: Sam,
    image_embeddings: torch.Tensor,
    gt_masks: torch.Tensor,
    image_index: torch.Tensor,
    boxes: torch.Tensor | None = None,
    image_hw: torch.Tensor | None = None,
    max_clicks: int = 10,
) -> dict[str, torch.Tensor]:
    """Per-mask results of the standard prompt evaluations (no reduction, see `PromptMetrics`).

    Args:
        sam: the model (its `decode` is used; embeddings are computed by the caller).
        image_embeddings: [B, C, h, w].
        gt_masks: [K, S, S] bool ground truth in the input frame.
        image_index: [K] image of each mask.
        boxes: [K, 4] xyxy ground-truth boxes for the one-box evaluation (skipped when None).
        image_hw: [K, 2] size of the real image inside the padded S x S frame (padding pixels
            are never predicted as foreground).
        max_clicks: length of the click curve.

    Returns [K] tensors `iou_point_oracle`, `iou_point_confident`, (`iou_box`) and `iou_clicks`
    [K, max_clicks] (click 1 = the centre point, most confident of 3 masks).
    """
    k, size = gt_masks.shape[0], gt_masks.shape[-1]
    gt = gt_masks.bool()
    region = image_regions(image_hw, k, size, gt.device)  # [K, S, S]

    def binarise(logits: torch.Tensor) -> torch.Tensor:  # [K, m, h, w] -> [K, m, S, S] bool
        pred = upscale_logits(logits.float(), (size, size)) > sam.mask_threshold
        return pred & region[:, None]

    coords = center_points(gt)[:, None]  # [K, 1, 2]
    labels = torch.ones(k, 1, dtype=torch.long, device=gt.device)
    logits, iou_pred = sam.decode(
        image_embeddings, points=(coords, labels), image_index=image_index
    )
    ious = mask_iou(binarise(logits), gt[:, None])  # [K, 3]
    best = iou_pred.argmax(dim=1)
    out = {
        "iou_point_oracle": ious.max(dim=1).values,
        "iou_point_confident": ious.gather(1, best[:, None])[:, 0],
    }
    if boxes is not None:
        box_logits, _ = sam.decode(
            image_embeddings, boxes=boxes, image_index=image_index, multimask_output=False
        )
        out["iou_box"] = mask_iou(binarise(box_logits)[:, 0], gt)

    curve = [out["iou_point_confident"]]
    prev = logits.gather(
        1, best[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
    )  # [K, 1, h, w]
    for _ in range(max_clicks - 1):
        pt, lab = next_clicks(binarise(prev)[:, 0], gt)
        coords = torch.cat([coords, pt[:, None]], dim=1)
        labels = torch.cat([labels, lab[:, None]], dim=1)
        prev, _ = sam.decode(
            image_embeddings,
            points=(coords, labels),
            mask_inputs=prev,
            image_index=image_index,
            multimask_output=False,
        )
        curve.append(mask_iou(binarise(prev)[:, 0], gt))
    out["iou_clicks"] = torch.stack(curve, dim=1)  # [K, max_clicks]
    return out


@torch.no_grad()
def evaluate_text_prompts(
    sam: Sam,
    image_embeddings: torch.Tensor,
    gt_masks: torch.Tensor,
    image_index: torch.Tensor,
    text_embeds: torch.Tensor,
    image_hw: torch.Tensor | None = None,
) -> torch.Tensor:
    """IoU [K] of the single-mask prediction for a text prompt alone.

    Args:
        sam: a model with a text branch. image_embeddings: [B, C, h, w].
        gt_masks: [K, S, S] bool. image_index: [K] image of each mask.
        text_embeds: [K, E] CLIP embeddings (a phrase's text embedding or a region's image one).
        image_hw: [K, 2] real image size inside the frame (padding is never foreground).
    """
    k, size = gt_masks.shape[0], gt_masks.shape[-1]
    dev = gt_masks.device
    pads = (torch.zeros(k, 2, 2, device=dev), torch.full((k, 2), -1, device=dev))  # as in training
    logits, _ = sam.decode(
        image_embeddings,
        points=pads,
        text_embeds=text_embeds[:, None],
        image_index=image_index,
        multimask_output=False,
        pad_points=False,
    )
    pred = upscale_logits(logits.float(), (size, size))[:, 0] > sam.mask_threshold
    return mask_iou(pred & image_regions(image_hw, k, size, dev), gt_masks)


class PromptMetrics:
    """Accumulates `evaluate_prompts` results over batches; `compute` gives the means.

    Means are sums over masks divided by mask counts, and `compute(reduce=...)` adds the sums
    and counts of every rank before dividing, so a multi-GPU mean weighs every mask once (not a
    mean of per-rank means).

    Args:
        noc_thresholds: IoU targets for NoC (0.85, 0.9 -> `noc85`, `noc90`).
        layout: result names and their widths (1 for [K] results, C for `iou_clicks` [K, C]);
            needed when reducing across ranks, since a rank may have seen no masks at all.
            None: taken from what was updated (single process only).
    """

    def __init__(
        self, noc_thresholds: tuple[float, ...] = (0.85, 0.9), layout: dict[str, int] | None = None
    ) -> None:
        self.noc_thresholds = noc_thresholds
        self.layout = layout
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[torch.Tensor]] = defaultdict(list)

    def update(self, results: dict[str, torch.Tensor]) -> None:
        for name, value in results.items():
            self._parts[name].append(value.detach().float().cpu())

    def _values(self, name: str, width: int) -> torch.Tensor:
        parts = self._parts.get(name) or [torch.zeros(0, width)]
        values = torch.cat(parts)
        return values.reshape(values.shape[0], width)  # [N, width]

    def compute(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """`miou_point_oracle`, `miou_point_confident`, `miou_box`, `miou_click_N`, `nocXX` (and
        `m<name>` for any other result), over the masks of every rank.

        Args:
            reduce: sums a flat float tensor over ranks (e.g. the strategy's all-reduce);
                None = this process only.
        """
        layout = self.layout or {
            n: (p[0].shape[1] if p[0].dim() > 1 else 1) for n, p in self._parts.items()
        }
        sums, counts = [], []
        for name, width in layout.items():
            values = self._values(name, width)
            sums.append(values.sum(0))
            if name == "iou_clicks":
                sums += [number_of_clicks(values, t).sum()[None] for t in self.noc_thresholds]
            counts.append(float(values.shape[0]))
        flat = torch.cat(sums + [torch.tensor(counts)])
        if reduce is not None:
            flat = reduce(flat.to(torch.float64)).cpu()
        n_total = flat[len(flat) - len(counts) :].tolist()
        out: dict[str, float] = {}
        offset = 0
        for (name, width), n in zip(layout.items(), n_total):
            extra = len(self.noc_thresholds) if name == "iou_clicks" else 0
            chunk = (flat[offset : offset + width + extra] / max(n, 1)).tolist()
            offset += width + extra
            if n == 0:
                continue
            if name == "iou_clicks":
                for i, v in enumerate(chunk[:width]):
                    out[f"miou_click_{i + 1}"] = v
                for t, v in zip(self.noc_thresholds, chunk[width:]):
                    out[f"noc{round(t * 100)}"] = v
            else:
                out["m" + name] = chunk[0]
        return out
