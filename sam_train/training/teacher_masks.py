"""Targets from a teacher SAM: its mask for each ground-truth mask's box prompt.

Used by the distillation stage's decoder phase with `mask_targets=teacher`: the student is
then trained to do what the teacher does for the same prompt, not what the annotation says.
"""

from __future__ import annotations

import torch

from sam_train.data.sam_samples import masks_to_boxes
from sam_train.models.sam.sam import upscale_logits
from sam_train.models.teacher import SamTeacher
from sam_train.training.prompts import PromptTargets


@torch.inference_mode()
def _teacher_logits(
    teacher: SamTeacher, teacher_embeddings: torch.Tensor, targets: PromptTargets, size: int
) -> torch.Tensor:
    scale = teacher.input_size / size  # student frame -> teacher frame
    logits, _ = teacher.sam.decode(
        teacher_embeddings,
        boxes=targets.boxes * scale,
        multimask_output=False,
        image_index=targets.image_index,
    )  # [K, 1, 4h, 4w]
    return upscale_logits(logits, (size, size))[:, 0]  # [K, S, S]


def teacher_mask_targets(
    teacher: SamTeacher, teacher_embeddings: torch.Tensor, targets: PromptTargets
) -> PromptTargets:
    """`targets` with each mask replaced by the teacher's mask for its box (inside the real
    image); a mask the teacher leaves empty keeps its ground truth."""
    if targets.num_masks == 0:
        return targets
    size = targets.masks.shape[-1]
    masks = _teacher_logits(teacher, teacher_embeddings, targets, size).clone() > 0
    if targets.image_hw is not None:
        rows = torch.arange(size, device=masks.device)
        inside = (rows[None, :, None] < targets.image_hw[:, 0, None, None]) & (
            rows[None, None, :] < targets.image_hw[:, 1, None, None]
        )
        masks &= inside
    empty = ~masks.flatten(1).any(1)
    masks[empty] = targets.masks[empty]
    boxes = torch.from_numpy(masks_to_boxes(masks.cpu().numpy())).to(targets.boxes)
    return PromptTargets(masks, boxes, targets.image_index, targets.image_hw, targets.slot)
