"""Typed batches that training steps receive.

Stage 1 (MAE) batches are plain image tensors [B, 3, H, W], normalised with IMAGENET_MEAN/STD
(`sam_train.models.pixels`).
Stage 2 (SAM) batches are `SamBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

# the masks stage 2 trains and validates on: the data drops the others, the module re-checks
MIN_MASK_AREA = 25  # pixels at the model input
MAX_MASK_FRACTION = 0.9  # of the image; larger masks are dropped (as in SAM)


def image_regions(
    image_hw: torch.Tensor | None, k: int, size: int, device: torch.device
) -> torch.Tensor:
    """[K, S, S] bool, True inside the real image of each mask in the padded S x S frame
    (`SamBatch.image_hw` of its image; all True without it): padding is never foreground."""
    if image_hw is None:
        return torch.ones(k, size, size, dtype=torch.bool, device=device)
    ar = torch.arange(size, device=device)
    return (ar[None, :, None] < image_hw[:, 0, None, None]) & (
        ar[None, None, :] < image_hw[:, 1, None, None]
    )


@dataclass
class SamBatch:
    """One stage-2 batch: B images, each with up to M instance masks (padded to the batch max).

    images:      [B, 3, S, S] float, normalised with IMAGENET_MEAN/STD; the resized image sits in
                 the top-left corner and the rest is zero padding (SAM's convention).
    masks:       [B, M, S, S] bool, instance masks in the same frame as `images`.
    mask_valid:  [B, M] bool, False for padding slots.
    boxes:       [B, M, 4] float, xyxy in pixels of the S x S frame, derived from the masks.
    category_ids:[B, M] long, -1 where unknown.
    categories:  B lists of M category names (None where unknown or padding).
    image_hw:    [B, 2] long, (h, w) of the resized image inside the padded square.
    image_ids:   B identifiers (the shard sample key or the COCO image id).
    region_embeds: optional [B, M, E] precomputed CLIP image embeddings of each mask's region.
    teacher_embeds: optional [B, C, h, w] a teacher SAM's precomputed image embeddings.
    mask_counts: what became of the images' annotated masks (`MASK_OUTCOMES` + read), summed.
    """

    images: torch.Tensor
    masks: torch.Tensor
    mask_valid: torch.Tensor
    boxes: torch.Tensor
    category_ids: torch.Tensor
    categories: list[list[str | None]] = field(default_factory=list)
    image_hw: torch.Tensor | None = None
    image_ids: list = field(default_factory=list)
    region_embeds: torch.Tensor | None = None
    teacher_embeds: torch.Tensor | None = None
    mask_counts: dict[str, int] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SamBatch:
        """Move every tensor field (Lightning calls this through `transfer_batch_to_device`)."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        return SamBatch(**moved)

    def pin_memory(self) -> SamBatch:
        """Page-locked copies (DataLoader(pin_memory=True) calls this on custom batches)."""
        return SamBatch(
            **{
                f.name: (v.pin_memory() if torch.is_tensor(v) else v)
                for f in fields(self)
                for v in [getattr(self, f.name)]
            }
        )

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def batch_size_of(batch: torch.Tensor | SamBatch) -> int:
    """Images in a batch of either stage (for throughput logging)."""
    return batch.batch_size if isinstance(batch, SamBatch) else batch.shape[0]
