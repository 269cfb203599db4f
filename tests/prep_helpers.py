"""Tiny on-disk inputs for the data_prep and shard tests (helpers only; no tests here)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam_train.data.sam_samples import SamSamplePrep


def write_image(path: Path, w: int, h: int, seed: int = 0, fmt: str | None = None) -> Path:
    """A small smooth random colour image (compresses well, decodes everywhere)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(path, format=fmt)
    return path


def image_folder(root: Path, n: int, size: tuple[int, int] = (24, 16)) -> Path:
    """`n` jpg/png images in nested folders."""
    for i in range(n):
        ext = "png" if i % 3 == 0 else "jpg"
        write_image(root / f"d{i % 2}" / f"img_{i:03d}.{ext}", *size, seed=i)
    return root


def _rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths, starting with a run of zeros (COCO crowd annotations)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root: Path) -> tuple[Path, Path]:
    """A COCO dataset exercising every segmentation form and every bad-input reason.

    Good annotations: polygon, two-part polygon, uncompressed RLE crowd, compressed RLE, and one
    with an unknown category. Bad: a 2-point polygon, a polygon outside the image, an image
    missing on disk, an unreadable image, an image without annotations.
    """
    images = root / "images"
    write_image(images / "a.jpg", 48, 40, seed=1)
    write_image(images / "sub" / "b.png", 40, 48, seed=2)
    write_image(images / "e.jpg", 32, 32, seed=3)
    (images / "c.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    m = np.zeros((48, 40), dtype=bool)
    m[5:20, 3:30] = True
    crowd = np.zeros((40, 48), dtype=bool)
    crowd[25:38, 10:44] = True
    crowd[30:33, 20:25] = False
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 48, "height": 40},
            {"id": 2, "file_name": "sub/b.png", "width": 40, "height": 48},
            {"id": 3, "file_name": "c.jpg", "width": 10, "height": 10},
            {"id": 4, "file_name": "missing.jpg", "width": 10, "height": 10},
            {"id": 5, "file_name": "e.jpg", "width": 32, "height": 32},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [4.5, 3.5, 20, 15],
                "segmentation": [[4.5, 3.5, 24.5, 3.5, 14.0, 18.5]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [30, 2, 16, 30],
                "segmentation": [[30, 2, 45, 2, 45, 12, 30, 12], [32, 20, 44, 20, 38, 31.7]],
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 1,
                "bbox": [10, 25, 34, 13],
                "segmentation": _uncompressed_rle(crowd),
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [0, 0, 1, 1],
                "segmentation": [[1, 1, 5, 1]],
            },  # 2 points
            {
                "id": 14,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [100, 100, 10, 10],
                "segmentation": [[100, 100, 110, 100, 110, 110]],
            },  # outside
            {
                "id": 20,
                "image_id": 2,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [3, 5, 27, 15],
                "segmentation": _rle_str(m),
            },
            {
                "id": 21,
                "image_id": 2,
                "category_id": 7,
                "iscrowd": 0,
                "bbox": [1, 30, 20, 15],
                "segmentation": [[1, 30, 21, 30, 21, 45, 1, 45]],
            },  # category not listed
            {
                "id": 30,
                "image_id": 3,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [1, 1, 5, 5],
                "segmentation": [[1, 1, 6, 1, 6, 6]],
            },
        ],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(coco))
    return images, ann


def make_sa1b(root: Path, n: int = 3) -> Path:
    """`n` SA-1B style pairs sa_{i}.jpg + sa_{i}.json (i = 1, 2, 10, ...) plus a jpg without json."""
    for i in [1, 2, 10, 11][:n]:
        write_image(root / f"sa_{i}.jpg", 36, 28, seed=i)
        anns = []
        for k in range(3):
            m = np.zeros((28, 36), dtype=bool)
            m[2 + 3 * k : 12 + 4 * k, 4 + 5 * k : 20 + 4 * k] = True
            rle = _rle_str(m)
            anns.append(
                {
                    "id": 100 * i + k,
                    "segmentation": rle,
                    "bbox": [4 + 5 * k, 2 + 3 * k, 16 - k, 10 + k],
                    "area": int(m.sum()),
                    "predicted_iou": 0.9,
                    "stability_score": 0.95,
                    "point_coords": [[10, 10]],
                    "crop_box": [0, 0, 36, 28],
                }
            )
        meta = {"image_id": i, "width": 36, "height": 28, "file_name": f"sa_{i}.jpg"}
        (root / f"sa_{i}.json").write_text(json.dumps({"image": meta, "annotations": anns}))
    write_image(root / "sa_99.jpg", 36, 28, seed=99)  # its json is missing
    return root


def identity_prep(img_size: int) -> SamSamplePrep:
    """A prep that keeps every mask: no filters, no flips."""
    return SamSamplePrep(
        img_size, max_masks=1000, min_mask_area=1, max_mask_fraction=1.0, hflip=False
    )


def key_of(sample: dict, rng: random.Random) -> str:
    """Decode function that returns the sample key (picklable for DataLoader workers)."""
    return sample["__key__"]


def as_list(items: list) -> list:
    return list(items)
