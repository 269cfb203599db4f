"""Stage-1 picture: original | masked input | reconstruction | reconstruction with visible patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam_train.data.transforms import denormalise
from sam_train.files import atomic_path
from sam_train.models.mae import MaskedAutoencoder


@torch.no_grad()
def mae_reconstruction_grid(
    model: MaskedAutoencoder, images: torch.Tensor, noise: torch.Tensor | None = None
) -> np.ndarray:
    """One row per image, four panels per row; returns an RGB uint8 array [rows*H, 4*W, 3].

    images: [B, 3, H, W] normalised. With normalised-pixel targets each predicted patch is
    un-normalised by the statistics of the same input patch (`pred_to_pixels`).
    """
    was_training = model.training
    model.eval()
    _, pred, mask = model(images, noise=noise)
    model.train(was_training)
    grid_hw = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    recon = model.unpatchify(model.pred_to_pixels(images, pred), grid_hw)  # [B, 3, H, W]
    pixel_mask = model.unpatchify(
        mask.unsqueeze(-1).expand(-1, -1, model.patch_size**2 * model.in_chans), grid_hw
    )  # [B, 3, H, W], 1 where masked
    original = denormalise(images)
    masked = original * (1 - pixel_mask) + 0.5 * pixel_mask
    recon = denormalise(recon)
    pasted = original * (1 - pixel_mask) + recon * pixel_mask
    panels = torch.stack([original, masked, recon, pasted], dim=1)  # [B, 4, 3, H, W]
    b, p, c, h, w = panels.shape
    grid = panels.permute(0, 3, 1, 4, 2).reshape(b * h, p * w, c)
    return (grid.float().cpu().numpy() * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
