"""The picture of segment-everything's masks: each mask filled in its own colour and outlined,
readable with hundreds of masks (no prompt markers: the masks came from a point grid)."""

from __future__ import annotations

import colorsys

import numpy as np
from scipy import ndimage

from sam_train.viz.labels import stack_rows, text_bar

RIM = (20, 20, 20)


def mask_colours(n: int) -> np.ndarray:
    """`n` distinct bright colours [n, 3] uint8: hues a golden-ratio step apart, so that
    neighbours in the drawing order differ however many masks there are."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.55 + 0.35 * ((np.arange(n) // 7) % 2)
    return (
        np.array([colorsys.hsv_to_rgb(h, s, 0.95) for h, s in zip(hues, sat)], np.float32).reshape(
            -1, 3
        )
        * 255
    )


def draw_everything(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The photo (left) and the photo with every mask filled and outlined (right), above a
    caption. masks: [H, W] bool, drawn in the order given (largest first keeps small ones
    visible on top)."""
    out = image.astype(np.float32).copy()
    colours = mask_colours(len(masks))
    edges = np.zeros(image.shape[:2], bool)
    for mask, colour in zip(masks, colours):
        out[mask] = 0.45 * out[mask] + 0.55 * colour
        edges |= mask & ~ndimage.binary_erosion(mask)
    out[edges] = RIM
    pair = np.concatenate([image, out.round().clip(0, 255).astype(np.uint8)], axis=1)
    caption = f"{len(masks)} automatic masks, each filled in its own colour and outlined"
    return stack_rows([pair, text_bar(pair.shape[1], caption)])
