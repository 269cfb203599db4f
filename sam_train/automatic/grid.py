"""Where "segment everything" prompts the model: point grids and the crop boxes of each layer.

Layer 0 is the whole image; layer i cuts it into 2^i x 2^i overlapping crops, each prompted by
its own (possibly sparser) grid. Points are in [0, 1] of the crop they belong to.
"""

from __future__ import annotations

import math

import numpy as np


def point_grid(n_per_side: int) -> np.ndarray:
    """n x n cell centres of the unit square, x varying fastest: [n*n, 2] (x, y) in [0, 1]."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # [n, n] each, rows = y
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per layer (0 = whole image); layer i has n_per_side / downscale^i points a side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(
    image_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes [x0, y0, x1, y1] (whole image first) and the layer of each.

    Layer i has 2^i crops a side overlapping by `overlap_ratio` of the short side scaled by
    2 / 2^i; crops are listed column by column (x outer), as segment-anything lists them.
    """
    h, w = image_hw
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + w) / n)
        crop_h = math.ceil((overlap * (n - 1) + h) / n)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(layer)
    return boxes, layers
