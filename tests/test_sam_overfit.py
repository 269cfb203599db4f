"""A tiny SAM, trained with the interactive loop in plain PyTorch, overfits synthetic shapes."""

from __future__ import annotations

import os

import pytest
import torch
from amg_helpers import shapes_on_noise
from conftest import fit_interactive, tiny_sam

from sam_train.metrics import evaluate_prompts
from sam_train.training import InteractiveConfig, select_masks

SIZE = 64


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
