"""Objects with exact masks pasted onto photos, for the sample dataset.

Two kinds of object: cut-outs of real objects (pixels taken through a real instance mask,
resized with the mask) and filled shapes (circle, rectangle, triangle, star) rasterised from
their polygon with pycocotools. Objects never overlap, so each stored mask is exactly the
pixels the object covers, and each shape's polygon decodes to exactly its mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep.rle import encode_masks, rle_to_json
from sam_train.data.sam_samples import nearest_index

SHAPES = ("circle", "rectangle", "triangle", "star")


@dataclass
class Cutout:
    rgb: np.ndarray  # [h, w, 3] uint8
    mask: np.ndarray  # [h, w] bool
    name: str


def cutouts_from(
    rgb: np.ndarray, masks: np.ndarray, names: list[str], min_area: int = 400
) -> list[Cutout]:
    """Crop every instance mask [N, H, W] of a photo to its box: a library of real objects."""
    out = []
    for mask, name in zip(masks.astype(bool), names):
        if mask.sum() < min_area:
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(Cutout(rgb[r0:r1, c0:c1].copy(), mask[r0:r1, c0:c1].copy(), name))
    return out


def shape_polygon(
    kind: str, cx: float, cy: float, r: float, rng: np.random.Generator
) -> list[float]:
    """A shape of radius r around (cx, cy) as a flat [x0, y0, x1, y1, ...] polygon."""
    turn = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        radii, n = [r] * 32, 32
    elif kind == "rectangle":
        a = rng.uniform(0.5, 1.0)
        pts = [(r, r * a), (-r, r * a), (-r, -r * a), (r, -r * a)]
        return _flat([_rotate(x, y, turn, cx, cy) for x, y in pts])
    elif kind == "triangle":
        radii, n = [r] * 3, 3
    else:  # star
        radii, n = [r if i % 2 == 0 else 0.45 * r for i in range(10)], 10
    pts = [
        (radii[i] * math.cos(2 * math.pi * i / n), radii[i] * math.sin(2 * math.pi * i / n))
        for i in range(n)
    ]
    return _flat([_rotate(x, y, turn, cx, cy) for x, y in pts])


def _rotate(x: float, y: float, t: float, cx: float, cy: float) -> tuple[float, float]:
    return cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t)


def _flat(pts: list[tuple[float, float]]) -> list[float]:
    return [round(v, 2) for p in pts for v in p]


def polygon_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    """Exactly what pycocotools' annToMask gives for this polygon: [h, w] bool."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)


def _free_spot(
    size: tuple[int, int],
    taken: list[tuple[int, int, int, int]],
    hw: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[int, int] | None:
    """Top-left (y, x) of a size (h, w) box that overlaps no taken box (with a 3 px gap)."""
    (bh, bw), (H, W) = size, hw
    if bh >= H or bw >= W:
        return None
    for _ in range(60):
        y, x = int(rng.integers(0, H - bh)), int(rng.integers(0, W - bw))
        if all(
            y + bh + 3 <= t0 or t2 + 3 <= y or x + bw + 3 <= t1 or t3 + 3 <= x
            for t0, t1, t2, t3 in taken
        ):
            return y, x
    return None


def _paste_cutout(
    img: np.ndarray, cut: Cutout, side: int, spot_fn
) -> tuple[np.ndarray, tuple] | None:
    h0, w0 = cut.mask.shape
    s = side / max(h0, w0)
    h, w = max(4, int(h0 * s + 0.5)), max(4, int(w0 * s + 0.5))
    spot = spot_fn((h, w))
    if spot is None:
        return None
    rgb = np.asarray(Image.fromarray(cut.rgb).resize((w, h), Image.Resampling.BILINEAR))
    small = cut.mask[nearest_index(h0, h)[:, None], nearest_index(w0, w)[None, :]]
    y, x = spot
    full = np.zeros(img.shape[:2], dtype=bool)
    full[y : y + h, x : x + w] = small
    img[y : y + h, x : x + w][small] = rgb[small]
    return full, (y, x, y + h, x + w)


def _paint_shape(img: np.ndarray, kind: str, side: int, spot_fn, rng: np.random.Generator):
    spot = spot_fn((side, side))
    if spot is None:
        return None
    y, x = spot
    poly = shape_polygon(kind, x + side / 2, y + side / 2, side / 2 - 1, rng)
    mask = polygon_mask(poly, *img.shape[:2])
    colour = rng.integers(30, 226, size=3)
    texture = rng.normal(0, 12, size=(int(mask.sum()), 3))  # a little grain, not a flat fill
    img[mask] = np.clip(colour + texture, 0, 255).astype(np.uint8)
    return mask, poly, (y, x, y + side, x + side)


def composite(
    photo: np.ndarray,
    library: list[Cutout],
    n_objects: int,
    rng: np.random.Generator,
    shape_prob: float = 0.4,
) -> tuple[np.ndarray, list[dict]]:
    """Paste up to `n_objects` non-overlapping objects on a copy of `photo` [H, W, 3].

    Returns the image and annotations {"segmentation", "category"}: shapes keep their polygon,
    cut-outs get a compressed RLE (string counts).
    """
    img = photo.copy()
    H, W = img.shape[:2]
    taken: list[tuple[int, int, int, int]] = []
    anns: list[dict] = []

    def spot_fn(size):
        return _free_spot(size, taken, (H, W), rng)

    for _ in range(n_objects):
        side = int(rng.uniform(0.15, 0.35) * min(H, W))
        if rng.random() < shape_prob or not library:
            kind = SHAPES[int(rng.integers(len(SHAPES)))]
            got = _paint_shape(img, kind, side, spot_fn, rng)
            if got is not None and got[0].any():
                mask, poly, box = got
                taken.append(box)
                anns.append({"segmentation": [poly], "category": kind, "mask": mask})
            continue
        cut = library[int(rng.integers(len(library)))]
        got = _paste_cutout(img, cut, side, spot_fn)
        if got is not None and got[0].sum() >= 16:
            mask, box = got
            taken.append(box)
            anns.append(
                {
                    "segmentation": rle_to_json(encode_masks(mask[None])[0]),
                    "category": cut.name,
                    "mask": mask,
                }
            )
    return img, anns
