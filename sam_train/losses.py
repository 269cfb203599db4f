"""SAM training losses as pure functions (sam2's `loss_fns.py` style), weighted in one place.

Resolution: losses are computed at the decoder's low-res logit size (4h x 4w = S/4, 256 px at
S = 1024). The ground-truth masks, given at S x S, are reduced once per batch by area averaging
(`masks_to_logit_size`), which gives soft targets in [0, 1] (the fraction of each 4x4 cell
inside the object). Upsampling the logits to S instead would cost 16x the memory and compute in
every one of the 11 rounds (64 masks x 3 outputs x 1024^2 pixels per image, with activations kept
for backward) while the extra supervision only concerns sub-cell boundary detail: the logits live
on the 4h x 4w grid and bilinear upsampling is a fixed smoothing of them, so the area-averaged
target is what a high-res loss would ask of each low-res logit to first order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_WEIGHTS = {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0}


def masks_to_logit_size(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks [..., S, S] -> soft float targets [..., h, w] by area averaging."""
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="area")
    return x.reshape(*lead, *size)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al.) per mask, averaged over pixels: [..., H, W] -> [...].

    Targets may be soft (in [0, 1]); alpha < 0 disables the class weighting.
    """
    logits, targets = logits.float(), targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask, with +1 smoothing: [..., H, W] -> [...]."""
    prob = logits.float().sigmoid().flatten(-2)
    targets = targets.float().flatten(-2)
    inter = (prob * targets).sum(-1)
    return 1 - (2 * inter + smooth) / (prob.sum(-1) + targets.sum(-1) + smooth)


def mask_iou_of_logits(
    logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """IoU of the thresholded prediction (logit > 0) with targets (>= 0.5): [..., H, W] -> [...]."""
    pred = (logits > 0).flatten(-2)
    gt = (targets >= 0.5).flatten(-2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp_min(eps)


def iou_mse_loss(
    iou_pred: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Squared error between predicted IoU [...] and the real IoU of each thresholded mask [...]."""
    with torch.no_grad():
        actual = mask_iou_of_logits(logits, targets)
    return (iou_pred.float() - actual) ** 2


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    valid_outputs: torch.Tensor | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """SAM's mask loss for K prompts with m outputs each, averaged over prompts.

    Args:
        logits: [K, m, h, w] mask logits.
        iou_pred: [K, m] predicted IoU.
        targets: [K, h, w] (soft) ground truth at the logit size (`masks_to_logit_size`).
        valid_outputs: [K, m] bool, outputs a prompt may use (e.g. only the 3 multimask outputs
            for a point, only the single output for a box); None = all.
        weights: overrides of `LOSS_WEIGHTS` (focal 20, dice 1, iou 1).

    Of several valid outputs only the one with the lowest weighted focal + dice loss gets the mask
    loss; the IoU loss applies to every valid output. Returns `loss_focal`, `loss_dice`,
    `loss_iou` (unweighted) and `loss` (weighted sum); zeros (with a graph) when K = 0.
    """
    w = {**LOSS_WEIGHTS, **(weights or {})}
    k, m = iou_pred.shape
    if valid_outputs is None:
        valid_outputs = torch.ones(k, m, dtype=torch.bool, device=logits.device)
    targets = targets.unsqueeze(1).expand_as(logits)
    focal = sigmoid_focal_loss(logits, targets)  # [K, m]
    dice = dice_loss(logits, targets)  # [K, m]
    iou = iou_mse_loss(iou_pred, logits, targets)  # [K, m]

    combo = (w["loss_focal"] * focal + w["loss_dice"] * dice).detach()
    best = combo.masked_fill(~valid_outputs, float("inf")).argmin(dim=1, keepdim=True)  # [K, 1]
    n = max(k, 1)
    valid_f = valid_outputs.float()
    out = {
        "loss_focal": focal.gather(1, best).sum() / n,
        "loss_dice": dice.gather(1, best).sum() / n,
        "loss_iou": ((iou * valid_f).sum(1) / valid_f.sum(1).clamp_min(1)).sum() / n,
    }
    out["loss"] = sum(w[name] * value for name, value in out.items())
    return out
