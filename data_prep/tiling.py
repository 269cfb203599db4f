"""Large images -> overlapping tiles, with every object clipped to each tile it touches.

Tiles are `tile` x `tile` (smaller only where the image is), `tile - overlap` apart; the last
row and column are moved back to end at the image border, so every tile is full size and
every pixel is covered. A clipped piece (an object cut by the tile border) smaller than
`min_area` pixels is dropped and counted: a sliver at the edge is a poor training target and
the overlap shows the object whole in a neighbour tile. Objects lying wholly inside a tile are
kept whatever their size.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from data_prep.common import PrepError
from data_prep.instances import Instance, crop_to_rle, tight
from data_prep.rle import rle_to_json


def check_tiling(tile: int | None, overlap: int) -> None:
    """A PrepError naming the fix for impossible tile options."""
    if tile is None:
        if overlap:
            raise PrepError("--overlap needs --tile SIZE (e.g. --tile 1024 --overlap 128)")
        return
    if tile < 16:
        raise PrepError(f"--tile {tile} is too small; use at least 16 px (e.g. --tile 1024)")
    if not 0 <= overlap < tile:
        raise PrepError(f"--overlap {overlap} must be in [0, {tile - 1}] for --tile {tile}")


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one side of n pixels."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile - overlap))
    return starts + [n - tile]


def tile_boxes(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y, x, th, tw) of every tile of an h x w image, row by row."""
    return [
        (y, x, min(tile, h), min(tile, w))
        for y in tile_starts(h, tile, overlap)
        for x in tile_starts(w, tile, overlap)
    ]


def clip(inst: Instance, y: int, x: int, th: int, tw: int) -> tuple[Instance, bool] | None:
    """The part of `inst` inside the tile at (y, x) in tile coordinates, and whether the tile
    border cut it; None when no pixel of it is inside."""
    h, w = inst.mask.shape
    r0, r1 = max(inst.y, y), min(inst.y + h, y + th)
    c0, c1 = max(inst.x, x), min(inst.x + w, x + tw)
    if r0 >= r1 or c0 >= c1:
        return None
    piece = tight(inst.mask[r0 - inst.y : r1 - inst.y, c0 - inst.x : c1 - inst.x], r0 - y, c0 - x)
    if piece is None:
        return None
    cut = (r0, r1, c0, c1) != (inst.y, inst.y + h, inst.x, inst.x + w)
    return Instance(*piece, meta=inst.meta), cut


def tile_annotations(
    instances: list[Instance], box: tuple[int, int, int, int], min_area: int
) -> tuple[list[dict], Counter]:
    """Stored annotations of one tile (RLE of the tile frame) and the fragments dropped."""
    y, x, th, tw = box
    anns, skipped = [], Counter()
    for inst in instances:
        got = clip(inst, y, x, th, tw)
        if got is None:
            continue
        piece, cut = got
        area = piece.area
        if cut and area < min_area:
            skipped["tile_fragment_too_small"] += 1
            continue
        ph, pw = piece.mask.shape
        anns.append(
            {
                **piece.meta,
                "segmentation": rle_to_json(crop_to_rle(piece.mask, piece.y, piece.x, (th, tw))),
                "bbox": [float(piece.x), float(piece.y), float(pw), float(ph)],
                "area": area,
            }
        )
    return anns, skipped


def tile_image(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The tile's pixels [th, tw, 3]."""
    y, x, th, tw = box
    return np.ascontiguousarray(rgb[y : y + th, x : x + tw])
