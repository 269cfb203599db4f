"""Prompt simulation for SAM training (training-only: nothing here is part of the model).

Coordinates are (x, y) in pixels of the padded S x S input frame, like `Sam.decode` takes them.
Every random draw takes an optional `torch.Generator`, so a run can be made reproducible without
touching global random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA, SamBatch

# point labels understood by the prompt encoder
PAD, BACKGROUND, FOREGROUND, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3
# first-prompt kinds
POINT, BOX, TEXT = 0, 1, 2


def random_tensor(
    shape: tuple[int, ...],
    device: torch.device,
    generator: torch.Generator | None,
    normal: bool = False,
) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) draws on `device`, from `generator` wherever it lives."""
    gen_device = generator.device if generator is not None else device
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=gen_device).to(device)


@dataclass
class PromptTargets:
    """The K masks a step trains on, flattened over the batch.

    masks:       [K, S, S] bool ground truth in the input frame.
    boxes:       [K, 4] float xyxy pixels (tight boxes of the masks).
    image_index: [K] long, the image each mask belongs to.
    image_hw:    [K, 2] long, size of the real image inside the padded frame (None = all S x S).
    slot:        [K] long, the mask's slot in the batch (`batch.masks[image_index, slot]`), to
                 fetch per-mask data such as category ids and region embeddings.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    image_index: torch.Tensor
    image_hw: torch.Tensor | None = None
    slot: torch.Tensor | None = None

    @property
    def num_masks(self) -> int:
        return self.masks.shape[0]


def select_masks(
    batch: SamBatch,
    max_masks_per_image: int = 64,
    max_area_frac: float = MAX_MASK_FRACTION,
    min_area: int = MIN_MASK_AREA,
    generator: torch.Generator | None = None,
) -> PromptTargets:
    """Valid masks of a batch, at most `max_masks_per_image` per image (a random subset).

    Drops padding slots, masks covering more than `max_area_frac` of the image and masks smaller
    than `min_area` pixels. K may be 0 (then the interactive loop returns zero losses).
    """
    b, m, s, _ = batch.masks.shape
    area = batch.masks.flatten(2).sum(-1).float()  # [B, M]
    if batch.image_hw is not None:
        image_area = batch.image_hw.prod(-1).float()[:, None]  # [B, 1]
    else:
        image_area = torch.full((b, 1), float(s * s), device=area.device)
    keep = batch.mask_valid.bool() & (area >= min_area) & (area <= max_area_frac * image_area)
    # random subset: rank the kept slots of each image by noise, keep the first few
    noise = random_tensor((b, m), area.device, generator).masked_fill(~keep, 2.0)
    rank = noise.argsort(dim=1).argsort(dim=1)
    keep &= rank < max_masks_per_image
    image_index, slot = keep.nonzero(as_tuple=True)
    return PromptTargets(
        masks=batch.masks[image_index, slot].bool(),
        boxes=batch.boxes[image_index, slot].float(),
        image_index=image_index,
        image_hw=batch.image_hw[image_index] if batch.image_hw is not None else None,
        slot=slot,
    )


def sample_points_in(
    regions: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel drawn uniformly from each region [K, H, W] bool.

    Draws a row with probability proportional to its pixel count, then a pixel of that row, so
    the extra memory is O(K * (H + W)) rather than a noise map per mask. Returns points [K, 2]
    (x, y) float and `found` [K] bool (False for an empty region, whose point is (0, 0)).
    """
    k, _, w = regions.shape
    cdf = regions.sum(-1).cumsum(-1).float()  # [K, H]
    total = cdf[:, -1:]  # [K, 1]
    u = random_tensor((k, 1), regions.device, generator) * total
    rows = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[1] - 1)  # [K, 1]
    row_mask = regions.gather(1, rows[:, :, None].expand(-1, 1, w))[:, 0]  # [K, W]
    cols = (random_tensor((k, w), regions.device, generator) * row_mask).argmax(dim=1)
    points = torch.stack([cols, rows[:, 0]], dim=1).float()
    found = total[:, 0] > 0
    return points * found[:, None], found


def sample_error_points(
    pred: torch.Tensor,
    gt: torch.Tensor,
    region: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrective click per mask, uniform over the error region of the prediction.

    pred, gt: [K, H, W] bool; region: [K, H, W] bool where clicks may land (the real image).
    A false-negative pixel gives a foreground click (label 1), a false-positive pixel a background
    click (label 0). Where the prediction has no error a background click is drawn from outside
    the object (sam2's rule), so every mask gets a point. Returns points [K, 2], labels [K].
    """
    gt = gt.bool()
    error = pred.bool() ^ gt
    if region is not None:
        error &= region
    no_error = ~error.flatten(1).any(dim=1)  # [K]
    outside = ~gt if region is None else ~gt & region
    error = torch.where(no_error[:, None, None], outside, error)
    points, _ = sample_points_in(error, generator)
    x, y = points.long().unbind(1)
    labels = gt[torch.arange(gt.shape[0], device=gt.device), y, x].long()  # 1 on FN, 0 on FP
    return points, labels


def noisy_boxes(
    boxes: torch.Tensor,
    noise_frac: float = 0.1,
    max_noise: float = 20.0,
    image_hw: torch.Tensor | None = None,
    size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Jitter xyxy boxes [K, 4]: each coordinate moves by N(0, std), std = `noise_frac` of the
    box side along that axis, at most `max_noise` px (SAM). Clamped to the image, kept ordered."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)  # [K, 2]
    std = (noise_frac * wh).clamp(max=max_noise).repeat(1, 2)  # [K, 4]
    out = boxes + std * random_tensor(tuple(boxes.shape), boxes.device, generator, normal=True)
    out = clamp_points(out.view(-1, 2, 2), image_hw, size).view(-1, 4)
    lo, hi = torch.minimum(out[:, :2], out[:, 2:]), torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi], dim=1)


def clamp_points(
    points: torch.Tensor, image_hw: torch.Tensor | None, size: int | None
) -> torch.Tensor:
    """Clamp points [K, N, 2] (x, y) into each image ([0, w-1] x [0, h-1]) or into [0, size-1]."""
    if image_hw is not None:
        hi = (image_hw.flip(-1) - 1).to(points.dtype)[:, None, :]  # [K, 1, 2] as (w-1, h-1)
        return torch.minimum(points.clamp_min(0), hi)
    if size is not None:
        return points.clamp(0, size - 1)
    return points


def first_prompts(
    targets: PromptTargets,
    point_prob: float = 0.5,
    box_prob: float = 0.5,
    text_prob: float = 0.0,
    box_noise_frac: float = 0.1,
    box_max_noise: float = 20.0,
    generator: torch.Generator | None = None,
    text_ok: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first prompt of each mask: a uniform foreground point, a noisy box, or text.

    Kinds are drawn with chances proportional to (point_prob, box_prob, text_prob); a mask drawn
    TEXT without a text embedding (`text_ok` False, e.g. below the region-size threshold) gets
    a point or a box instead, in the point : box ratio.

    Returns coords [K, 2, 2], labels [K, 2] and kinds [K] (POINT / BOX / TEXT). A point is
    written as (point, padding), a box as its two corners (labels 2, 3) and a text prompt as two
    padding points (its token comes from `text_embeds`), so one batch mixes all three with the
    token layout the official model sees for points and boxes.
    """
    total = point_prob + box_prob
    if total <= 0:
        raise ValueError("point_prob + box_prob must be positive (the fallback of text prompts)")
    k, size = targets.num_masks, targets.masks.shape[-1]
    device = targets.masks.device
    text_weight = max(text_prob, 0.0) if text_ok is not None else 0.0  # no text: points, boxes
    u = random_tensor((k,), device, generator) * (total + text_weight)
    kinds = (u >= point_prob).long()  # 0 point, 1 box
    if text_weight > 0:
        kinds = torch.where((u >= total) & text_ok.to(device), TEXT, kinds)
        redraw = (u >= total) & (kinds != TEXT)  # wanted text, has none: point or box
        v = random_tensor((k,), device, generator) * total
        kinds = torch.where(redraw, (v >= point_prob).long(), kinds)
    pts, _ = sample_points_in(targets.masks, generator)  # [K, 2]
    point_coords = torch.stack([pts, torch.zeros_like(pts)], dim=1)  # [K, 2, 2]
    point_labels = torch.tensor([FOREGROUND, PAD], device=device).expand(k, 2)
    box = noisy_boxes(
        targets.boxes, box_noise_frac, box_max_noise, targets.image_hw, size, generator
    )
    box_labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=device).expand(k, 2)
    is_box, is_text = (kinds == BOX), (kinds == TEXT)
    coords = torch.where(is_box[:, None, None], box.view(k, 2, 2), point_coords)
    coords = coords.masked_fill(is_text[:, None, None], 0.0)
    labels = torch.where(is_box[:, None], box_labels, point_labels)
    labels = labels.masked_fill(is_text[:, None], PAD)
    return coords, labels, kinds
