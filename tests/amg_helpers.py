"""A tiny SAM briefly trained on flat-coloured shapes, and photos-like scenes of those shapes:
random weights give masks spread over the whole image that every filter removes, a few
dozen steps give object-like masks that "segment everything" can keep, filter and compare.
Also stage-2 batches of four shapes on noise (`shapes_on_noise`) for short training loops."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from conftest import fit_interactive, tiny_sam

from sam_train.data.batch import SamBatch
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from sam_train.models.sam.sam import Sam
from sam_train.training import InteractiveConfig

SIZE = 64


def shapes_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image [h, w, 3] of 5 flat-coloured disks and rectangles on noise, and their
    masks [5, h, w] bool (later shapes cover earlier ones)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 166, size=(h, w, 3)).astype(np.float64)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for i in range(5):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        r = rng.uniform(0.09, 0.2) * min(h, w)
        if i % 2 == 0:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            m = (abs(yy - cy) < r) & (abs(xx - cx) < 1.4 * r)
        masks = [p & ~m for p in masks] + [m]
        image[m] = rng.choice([20, 235], size=3) + rng.normal(0, 4, size=3)
    return image.clip(0, 255).astype(np.uint8), np.stack(masks)


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


def scene_batch(scenes: list[tuple[np.ndarray, np.ndarray]]) -> SamBatch:
    """Scenes (at most SIZE a side) as the model sees them: normalised, padded to SIZE x SIZE."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    h, w = scenes[0][0].shape[:2]
    pad = (0, SIZE - w, 0, SIZE - h)
    images = torch.stack(
        [F.pad((torch.from_numpy(im).permute(2, 0, 1) / 255 - mean) / std, pad) for im, _ in scenes]
    )  # [B, 3, S, S]
    masks = torch.stack([F.pad(torch.from_numpy(m), pad) for _, m in scenes])  # [B, 5, S, S]
    boxes = torch.zeros(*masks.shape[:2], 4)
    valid = masks.flatten(2).any(-1)
    for b, i in valid.nonzero().tolist():
        ys, xs = masks[b, i].nonzero(as_tuple=True)
        boxes[b, i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    return SamBatch(images.float(), masks, valid, boxes, torch.full(masks.shape[:2], -1))


SCENE_HW = (48, 64)
TRAIN_SEEDS = (0, 1)


def trained_tiny_sam(steps: int = 60, seed: int = 0) -> Sam:
    """A 64 px SAM (8 x 8 embeddings) after `steps` steps on two 48 x 64 shapes scenes
    (`shapes_scene(*SCENE_HW, s)` for s in TRAIN_SEEDS), overfitting them (seconds)."""
    sam = tiny_sam(48, seed=seed, image_size=SIZE, patch_size=8, window_size=4)
    batch = scene_batch([shapes_scene(*SCENE_HW, s) for s in TRAIN_SEEDS])
    cfg = InteractiveConfig(
        num_click_rounds=1,
        num_mask_only_rounds=0,
        point_prob=1.0,
        box_prob=0.0,
        loss_weights={"loss_focal": 2.0},  # 20:1 keeps a brief run at all-background
    )
    return fit_interactive(sam, batch, cfg, steps, warmup=10, seed=seed)
