"""Stage-2 sample preparation: one shard sample (image + RLE json) -> model-ready tensors, and
the collate that pads them into a `SamBatch`.

SAM's frame: the image is resized so its longest side is `img_size` and placed in the top-left
corner of an `img_size` square; the right/bottom is zero padding (after normalisation). Masks
follow the image exactly (nearest-neighbour at pixel centres) and boxes are derived from the
final masks, so image, masks and boxes always agree, flipped or not.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import get_worker_info

from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA, SamBatch
from sam_train.data.shards import decode_image
from sam_train.data.skipped import SkipSample
from sam_train.models.pixels import check_pixel_norm, normalise_pixels


@dataclass
class SamItem:
    """One prepared image: image [3, S, S] (padded), masks [M, h, w] bool (not padded yet: the
    collate pads once, straight into the batch), boxes [M, 4] xyxy in the S x S frame."""

    image: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    category_ids: torch.Tensor  # [M] long, -1 unknown
    categories: list[str | None]
    image_hw: tuple[int, int]  # (h, w) of the resized image inside the square
    image_id: object
    region_embeds: torch.Tensor | None = None  # [M, E] CLIP region embeddings (`clip.npy`)
    teacher_embeds: torch.Tensor | None = None  # [C, h, w] a teacher's embeddings (`teacher.npy`)
    # what became of the record's masks: read, kept, and left out by reason (MASK_OUTCOMES)
    mask_counts: dict[str, int] | None = None


# every mask a record holds ends in one of these (their sum is `read`)
MASK_OUTCOMES = (
    "kept",
    "empty",
    "below_min_mask_area",
    "above_max_mask_fraction",
    "over_max_masks",
)


def resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) with the longest side equal to `size` (SAM's rounding)."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def nearest_index(src: int, dst: int) -> np.ndarray:
    """Source row (or column) sampled by each of `dst` output pixels: nearest pixel centre, so a
    mask resized with it stays aligned with an image resized by PIL (converters and readers)."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Boolean masks [N, H, W] -> boxes [N, 4] float32 xyxy, pixel edges (x1 = last column + 1,
    the COCO convention: x1 = x + w). Empty masks give zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    rows, cols = masks.any(2), masks.any(1)  # [N, H], [N, W]
    for i in range(len(masks)):
        r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(r):
            boxes[i] = (c[0], r[0], c[-1] + 1, r[-1] + 1)
    return boxes


def normalise_image(img: Image.Image, size: int, pixel_norm: str = "imagenet") -> torch.Tensor:
    """RGB image (already resized) -> [3, size, size] normalised as the model expects
    (`sam_train.models.pixels`), zero-padded right/bottom."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, h, w]
    out = torch.zeros(3, size, size)
    out[:, : arr.shape[1], : arr.shape[2]] = normalise_pixels(arr, pixel_norm)
    return out


class SamSamplePrep:
    """Decode and prepare one stage-2 shard sample (picklable; used inside DataLoader workers).

    img_size: side S of the square model input.
    max_masks: masks kept per image at most (a random subset when there are more).
    min_mask_area: masks with fewer pixels after resizing to the model frame are dropped.
    max_mask_fraction: masks covering more than this fraction of the image are dropped.
    hflip: flip image and masks horizontally with probability 0.5 (within the image, before
        padding, so the image stays top-left).
    pixel_norm: the model's pixel normalisation (`Sam.pixel_norm`).
    """

    def __init__(
        self,
        img_size: int = 1024,
        max_masks: int = 64,
        min_mask_area: int = MIN_MASK_AREA,
        max_mask_fraction: float = MAX_MASK_FRACTION,
        hflip: bool = False,
        pixel_norm: str = "imagenet",
    ) -> None:
        self.img_size, self.max_masks = img_size, max_masks
        self.pixel_norm = check_pixel_norm(pixel_norm)
        self.min_mask_area, self.max_mask_fraction, self.hflip = (
            min_mask_area,
            max_mask_fraction,
            hflip,
        )

    def __call__(self, sample: dict, rng: random.Random) -> SamItem:
        img = decode_image(sample)
        record = json.loads(sample["json"])
        W, H = img.size
        h, w = resized_hw(H, W, self.img_size)
        for row, ann in enumerate(record["annotations"]):
            ann["_row"] = row  # the annotation's row in `clip.npy`, through shuffles and filters
        counts = dict.fromkeys(MASK_OUTCOMES, 0)
        counts["read"] = len(record["annotations"])
        anns = self._candidates(record["annotations"], H, W, (h * w) / (H * W), counts)
        rng.shuffle(anns)
        masks, kept = self._decode_masks(anns, H, W, h, w, counts)
        if not kept:
            raise SkipSample("no_masks", f"none of {len(record['annotations'])} masks usable")
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        teacher = teacher_embeds_of(sample)
        # precomputed teacher embeddings are those of the unflipped image: no flip then
        if self.hflip and teacher is None and rng.random() < 0.5:
            img, masks = (
                img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                np.ascontiguousarray(masks[:, :, ::-1]),
            )
        image_id = record.get("image", {}).get("id")
        return SamItem(
            image=normalise_image(img, self.img_size, self.pixel_norm),
            masks=torch.from_numpy(masks),
            boxes=torch.from_numpy(masks_to_boxes(masks)),
            category_ids=torch.tensor(
                [int(a.get("category_id", -1)) for a in kept], dtype=torch.long
            ),
            categories=[a.get("category") for a in kept],
            image_hw=(h, w),
            image_id=image_id if image_id is not None else sample.get("__key__"),
            region_embeds=region_embeds_of(sample, kept),
            teacher_embeds=teacher,
            mask_counts=counts,
        )

    def _candidates(
        self, anns: list[dict], H: int, W: int, area_scale: float, counts: dict[str, int]
    ) -> list[dict]:
        """Annotations whose area passes the filters (checked exactly again after resizing);
        the others counted in `counts` by reason."""
        out = []
        for ann in anns:
            seg = ann["segmentation"]
            if list(seg["size"]) != [H, W]:
                raise ValueError(f"mask size {seg['size']} != image size {[H, W]}")
            area = ann.get("area") or float(mask_utils.area(compressed_rle(seg)))
            if area > self.max_mask_fraction * H * W:
                counts["above_max_mask_fraction"] += 1
            elif area * area_scale < self.min_mask_area / 4:
                counts["empty" if area == 0 else "below_min_mask_area"] += 1
            else:
                out.append(ann)
        return out

    def _decode_masks(
        self, anns: list[dict], H: int, W: int, h: int, w: int, counts: dict[str, int]
    ) -> tuple[np.ndarray, list[dict]]:
        """Decode in chunks until `max_masks` pass the exact area checks: [M, h, w] bool; the
        masks that fail them, and those never reached, counted in `counts`."""
        masks, kept, start = [], [], 0
        while len(kept) < self.max_masks and start < len(anns):
            chunk = anns[start : start + self.max_masks - len(kept)]
            start += len(chunk)
            small = resize_decoded(
                mask_utils.decode([compressed_rle(a["segmentation"]) for a in chunk]), h, w
            )
            area = small.reshape(len(chunk), -1).sum(1, dtype=np.int64)  # uint8 sums are fast
            large = area > self.max_mask_fraction * h * w
            ok = (area >= self.min_mask_area) & ~large
            counts["empty"] += int(((area == 0) & ~ok).sum())
            counts["below_min_mask_area"] += int(((area > 0) & (area < self.min_mask_area)).sum())
            counts["above_max_mask_fraction"] += int(large.sum())
            masks.append(small[ok].view(bool))
            kept += [a for a, good in zip(chunk, ok) if good]
        counts["kept"] += len(kept)
        counts["over_max_masks"] += len(anns) - start
        return (np.concatenate(masks) if masks else np.zeros((0, h, w), bool)), kept


def region_embeds_of(sample: dict, kept: list[dict]) -> torch.Tensor | None:
    """Rows of the sample's `clip.npy` [N_annotations, E] (from `sam-prep clip-embed`) for the
    kept annotations, in their order: [M, E] float; None when the sample has none. A horizontal
    flip keeps the rows (CLIP embeddings are nearly flip-invariant)."""
    raw = sample.get("clip.npy")
    if raw is None:
        return None
    table = np.load(io.BytesIO(raw), allow_pickle=False)
    return torch.from_numpy(table[[a["_row"] for a in kept]].astype(np.float32)).reshape(
        len(kept), table.shape[1]
    )


def teacher_embeds_of(sample: dict) -> torch.Tensor | None:
    """The sample's `teacher.npy` (from `sam-prep teacher-embed`) as float [C, h, w], or None."""
    raw = sample.get("teacher.npy")
    if raw is None:
        return None
    return torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32))


def resize_decoded(full: np.ndarray, h: int, w: int) -> np.ndarray:
    """pycocotools' decode output [H, W, n] (Fortran order) -> [n, h, w] uint8, C order,
    nearest-neighbour. The one layout transpose is done at the smaller of the two sizes."""
    H, W = full.shape[:2]
    rows, cols = nearest_index(H, h), nearest_index(W, w)
    if H * W <= h * w:
        src = np.ascontiguousarray(full.transpose(2, 0, 1))  # [n, H, W]
        return np.take(np.take(src, rows, axis=1), cols, axis=2)
    src = full.transpose(2, 1, 0)  # [n, W, H], already C-contiguous
    return np.ascontiguousarray(
        np.take(np.take(src, cols, axis=1), rows, axis=2).transpose(0, 2, 1)
    )


def compressed_rle(seg: dict) -> dict:
    """A stored COCO RLE (`counts` as text) as pycocotools takes it (`counts` as bytes)."""
    counts = seg["counts"]
    return {
        "size": list(seg["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Zeros, in shared memory inside a DataLoader worker so the batch is not copied again to
    reach the training process (what torch's default_collate does)."""
    t = torch.zeros(*shape, dtype=dtype)
    return t.share_memory_() if get_worker_info() is not None else t


def collate_sam(items: list[SamItem]) -> SamBatch:
    """Pad every item to the batch's largest mask count M: masks [B, M, S, S], boxes [B, M, 4]."""
    B, S = len(items), items[0].image.shape[-1]
    M = max(len(it.masks) for it in items)
    images = _zeros(B, 3, S, S, dtype=torch.float32)
    masks = _zeros(B, M, S, S, dtype=torch.bool)
    valid = torch.zeros(B, M, dtype=torch.bool)
    boxes = torch.zeros(B, M, 4)
    cat_ids = torch.full((B, M), -1, dtype=torch.long)
    names: list[list[str | None]] = []
    region = None  # [B, M, E] only when every item has precomputed region embeddings
    if all(it.region_embeds is not None for it in items):
        region = torch.zeros(B, M, items[0].region_embeds.shape[-1])
        for b, it in enumerate(items):
            region[b, : len(it.region_embeds)] = it.region_embeds
    teacher = None  # [B, C, h, w] only when every item has precomputed teacher embeddings
    if all(it.teacher_embeds is not None for it in items):
        teacher = torch.stack([it.teacher_embeds for it in items])
    for b, it in enumerate(items):
        m, (h, w) = len(it.masks), it.masks.shape[1:]
        images[b] = it.image
        masks[b, :m, :h, :w] = it.masks
        valid[b, :m], boxes[b, :m], cat_ids[b, :m] = True, it.boxes, it.category_ids
        names.append(it.categories + [None] * (M - m))
    return SamBatch(
        images=images,
        masks=masks,
        mask_valid=valid,
        boxes=boxes,
        category_ids=cat_ids,
        categories=names,
        image_hw=torch.tensor([it.image_hw for it in items], dtype=torch.long),
        image_ids=[it.image_id for it in items],
        region_embeds=region,
        teacher_embeds=teacher,
        mask_counts=_summed([it.mask_counts for it in items]),
    )


def _summed(counts: list[dict[str, int] | None]) -> dict[str, int] | None:
    if any(c is None for c in counts):
        return None
    return {k: sum(c.get(k, 0) for c in counts) for k in counts[0]}
