"""Vectorised per-mask operations of automatic mask generation: stability, boxes, RLE, clean-up.

Masks are torch tensors [N, H, W] (logits or bool); everything is computed for all N at once.
RLEs are COCO's: column-major runs starting with a run of zeros.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage


def count_above(logits: torch.Tensor, cut: float) -> torch.Tensor:
    """Pixels above `cut` per mask: logits [N, H, W] -> [N] int32. Rows are summed as uint8
    into int16 first (exact below 32768 columns), then into int32: one int32 sum would convert
    every pixel to int32 first."""
    above = (logits > cut).view(torch.uint8)
    if logits.shape[-1] < 2**15:
        return above.sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return above.sum((-1, -2), dtype=torch.int32)


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the mask binarised at threshold + offset with the one at threshold - offset.

    logits [N, H, W] -> [N] float (nan for a mask empty at both cut-offs); the tighter mask is
    inside the looser one, so the IoU is a ratio of pixel counts.
    """
    return count_above(logits, threshold + offset) / count_above(logits, threshold - offset)


def _boxes(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Tight boxes [N, 4] from which rows [N, H] and columns [N, W] hold a pixel."""
    h, w = rows.shape[-1], cols.shape[-1]
    top = rows.int().argmax(dim=-1)
    bottom = h - 1 - rows.flip(-1).int().argmax(dim=-1)
    left = cols.int().argmax(dim=-1)
    right = w - 1 - cols.flip(-1).int().argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)  # [N, 4]
    return boxes * rows.any(dim=-1, keepdim=True)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes [N, 4] (x0, y0, x1, y1; x1, y1 inclusive) of bool masks [N, H, W];
    an empty mask gives [0, 0, 0, 0]."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    return _boxes(masks.any(dim=-1), masks.any(dim=-2))


def logits_to_boxes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """`masks_to_boxes(logits > threshold)` from row and column maxima of the logits [N, H, W]
    (a row holds a pixel of the mask when its largest logit passes): no full-size bool mask."""
    if logits.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=logits.device)
    return _boxes(logits.amax(dim=-1) > threshold, logits.amax(dim=-2) > threshold)


def near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """[N] bool: a box (crop frame) within `atol` px of a crop edge that is not an image edge.
    Such masks are probably cut off by the crop; the neighbouring crop sees them whole."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    shift = crop[[0, 1, 0, 1]]
    full = boxes.float() + shift  # [N, 4] in image pixels
    at_crop = torch.isclose(full, crop[None], atol=atol, rtol=0)
    at_image = torch.isclose(full, image[None], atol=atol, rtol=0)
    return (at_crop & ~at_image).any(dim=1)


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """COCO compressed RLEs ({"size": [h, w], "counts": str}) of bool masks [N, H, W]."""
    if masks.shape[0] == 0:
        return []
    # [N, W, H] C-order is [H, W, N] Fortran order: what pycocotools encodes, without a copy
    fortran = masks.transpose(1, 2).contiguous().cpu().numpy().astype(np.uint8).transpose(2, 1, 0)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE (compressed or uncompressed) -> bool [H, W]."""
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    return mask_utils.decode(rle).astype(bool)


def uncompressed_rle(rle: dict) -> dict:
    """The run lengths of a compressed COCO RLE as a list of ints."""
    mask = decode_rle(rle)
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ('holes') or drop islands ('islands') smaller than `min_area` pixels
    (8-connected); an all-small mask keeps its largest island. Returns (mask, changed)."""
    holes = mode == "holes"
    work = ~mask if holes else mask
    labels, n = ndimage.label(work, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # [n]
    small = sizes < min_area
    if not small.any():
        return mask, False
    if holes:
        return mask | np.isin(labels, np.flatnonzero(small) + 1), True
    keep = np.flatnonzero(~small) + 1
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True
