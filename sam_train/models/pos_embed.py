"""Positional embeddings: fixed 2-D sine-cosine tables and grid resizing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of 1-D positions: [N] -> [N, dim] (half sin, half cos)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = positions.double().reshape(-1)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """2-D sine-cosine table as in MAE: [grid_h * grid_w, dim], row-major over (h, w).

    Half of the channels encode the column (w), half the row (h), matching the official MAE
    layout so pretrained checkpoints line up.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    gh, gw = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    emb_w = sincos_1d(dim // 2, gw)
    emb_h = sincos_1d(dim // 2, gh)
    return torch.cat([emb_w, emb_h], dim=1)


def resize_grid_embed(
    pos: torch.Tensor, new_hw: tuple[int, int], num_prefix_tokens: int = 0
) -> torch.Tensor:
    """Bicubically resize a positional table to a new patch grid.

    pos: [1, prefix + H*W, D] (flat, square grid) or [1, H, W, D] (SAM layout). The prefix
    tokens (e.g. the class token) are kept as they are. Returns the same layout as given.
    """
    if pos.dim() == 4:
        grid = pos.permute(0, 3, 1, 2)  # [1, D, H, W]
        grid = F.interpolate(grid.float(), size=new_hw, mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).to(pos.dtype)
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    side = int(math.isqrt(grid.shape[1]))
    if side * side != grid.shape[1]:
        raise ValueError(f"positional table of {grid.shape[1]} tokens is not a square grid")
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_hw, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], -1).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)
