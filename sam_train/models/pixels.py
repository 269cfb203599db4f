"""The pixel normalisations models here take their images in: ImageNet statistics (MAE, SAM,
MobileSAM, timm: `(rgb / 255 - MEAN) / STD` per channel), or LiteMedSAM's per-image min-max."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How a model's input images are normalised; a model records its own (`Sam.pixel_norm`):
#   imagenet  (rgb - MEAN * 255) / (STD * 255) per channel (SAM, MobileSAM, MAE, our models)
#   min_max   (rgb - min) / (max - min) over the whole resized image, to [0, 1] (LiteMedSAM)
# Either way the image is resized (longest side) first and zero-padded bottom-right after.
PIXEL_NORMS = ("imagenet", "min_max")


def check_pixel_norm(pixel_norm: str) -> str:
    if pixel_norm not in PIXEL_NORMS:
        raise ValueError(f"pixel_norm must be one of {list(PIXEL_NORMS)}, got {pixel_norm!r}")
    return pixel_norm


def normalise_pixels(rgb: torch.Tensor, pixel_norm: str = "imagenet") -> torch.Tensor:
    """Resized, unpadded RGB in 0-255 units [..., 3, h, w] -> the model's float input
    (min-max over each image's own pixels, all channels together)."""
    x = rgb.float()
    if check_pixel_norm(pixel_norm) == "min_max":
        flat = x.flatten(-3)  # [..., 3*h*w]
        lo = flat.min(-1).values[..., None, None, None]
        hi = flat.max(-1).values[..., None, None, None]
        return (x - lo) / (hi - lo).clamp(min=1e-8)
    mean = (torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255).float()[:, None, None]
    std = (torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255).float()[:, None, None]
    return (x - mean) / std


def denormalise_pixels(x: torch.Tensor, pixel_norm: str = "imagenet") -> torch.Tensor:
    """Model inputs [..., 3, h, w] -> RGB in 0-1 units (min-max inputs are their own 0-1 RGB,
    up to the image's contrast stretch, which min-max normalising again undoes)."""
    if check_pixel_norm(pixel_norm) == "min_max":
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
    return x * std + mean
