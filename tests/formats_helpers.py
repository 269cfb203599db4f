"""Reading converted shards back for the format tests (helpers only; no tests here)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.inspect_shards import iter_samples
from data_prep.rle import decode_masks, json_to_rle


def stored(folder: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """{key: (json record, image [H, W, 3] uint8)} of every sample in the folder."""
    out = {}
    for key, files in iter_samples(folder):
        ext = "jpg" if "jpg" in files else "png"
        rgb = np.asarray(Image.open(io.BytesIO(files[ext])).convert("RGB"))
        out[key] = (json.loads(files["json"]) if "json" in files else {}, rgb)
    return out


def masks_by_id(record: dict) -> dict:
    """{annotation id: mask [H, W] bool} of one stored record."""
    anns = record["annotations"]
    masks = decode_masks([json_to_rle(a["segmentation"]) for a in anns])
    return {a["id"]: m for a, m in zip(anns, masks)}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.tar"))}


def save_label(path: Path, label: np.ndarray) -> Path:
    """A label image as PNG (uint8 / uint16) or TIFF (any integer type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, label)
    else:
        Image.fromarray(label).save(path)
    return path
