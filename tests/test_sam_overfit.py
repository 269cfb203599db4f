"""A tiny SAM, trained with the interactive loop in plain PyTorch, overfits synthetic shapes."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import fit_interactive, tiny_sam

from sam_train.data.batch import SamBatch
from sam_train.metrics import evaluate_prompts
from sam_train.training import InteractiveConfig, select_masks

SIZE = 64


def shapes_on_noise(num_images: int = 2, size: int = SIZE, seed: int = 0) -> SamBatch:
    """Images of four flat-coloured shapes (disk, rectangle, triangle, ring) on noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, size, size, generator=g) * 0.3
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size / 64
    all_masks = []
    for b in range(num_images):
        masks = [
            (xx - (18 + 6 * b) * c) ** 2 + (yy - 20 * c) ** 2 < (11 * c) ** 2,
            (xx >= 34 * c) & (xx < 58 * c) & (yy >= (8 + 4 * b) * c) & (yy < 26 * c),
            (xx - 12 * c + yy - 36 * c >= 0) & (yy < 58 * c) & (xx < 40 * c) & (xx >= 12 * c),
            (xx >= 44 * c)
            & (xx < 60 * c)
            & (yy >= 36 * c)
            & (yy < 60 * c)
            & ~((xx >= 49 * c) & (xx < 55 * c) & (yy >= 42 * c) & (yy < 54 * c)),
        ]
        for m in masks:
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            images[b] = torch.where(m, colour + 0.1 * images[b], images[b])
        all_masks.append(torch.stack(masks))
    masks = torch.stack(all_masks)  # [B, 4, S, S]
    boxes = torch.zeros(*masks.shape[:2], 4)
    for idx in range(masks.shape[0] * masks.shape[1]):
        b, i = divmod(idx, masks.shape[1])
        ys, xs = masks[b, i].nonzero(as_tuple=True)
        boxes[b, i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    valid = torch.ones(masks.shape[:2], dtype=torch.bool)
    return SamBatch(images, masks, valid, boxes, torch.full(masks.shape[:2], -1))


@pytest.fixture
def one_thread():
    """Tiny ops run fastest on one thread, and a busy machine does not stall OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_sam_overfits_shapes_with_one_point(one_thread) -> None:
    seed = int(os.environ.get("SAM_OVERFIT_SEED", 0))
    torch.manual_seed(seed)
    batch = shapes_on_noise()
    sam = tiny_sam(48, seed=None, image_size=SIZE, patch_size=8, window_size=4)
    # a shortened recipe: first prompt, one corrective click, one mask-only round
    cfg = InteractiveConfig(
        num_click_rounds=1, num_mask_only_rounds=1, point_prob=0.75, box_prob=0.25
    )
    fit_interactive(sam, batch, cfg, steps=300, warmup=20, seed=seed)
    targets = select_masks(batch, min_area=4)
    with torch.no_grad():
        out = evaluate_prompts(
            sam,
            sam.embed_images(batch.images),
            targets.masks,
            targets.image_index,
            boxes=targets.boxes,
            max_clicks=2,
        )
    assert targets.num_masks == 8
    summary = {k: round(v.float().mean().item(), 3) for k, v in out.items()}
    print("overfit mIoU:", summary)
    assert summary["iou_point_oracle"] >= 0.9, summary
    assert summary["iou_point_confident"] >= 0.85, summary
