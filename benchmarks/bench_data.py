"""Data pipeline throughput: shard conversion and shard reading, both stages.

    python benchmarks/bench_data.py [--images 160] [--sam-size 1024] [--big 4] [--json out.json]

Converters: images/s of `convert_images` (stage 1), `convert_coco` (stage 2, polygon
annotations rasterised to RLE) and `convert_masks` (stage 2, one 16-bit instance label PNG per
image with the same 12 shapes as the COCO polygons) with 1 and 2 worker processes, on 640x480
JPEG crops of the sample photos. Tiling: `--big` 4096 x 4096 16-bit single-channel TIFFs
(smooth noise, like a fluorescence slide) with a label image of 800 objects, cut into 1024 px
tiles with 128 px overlap (25 tiles each) and mapped with `--normalize percentile:1,99.8`,
through `convert_masks` (stage 2) and `convert_images` (stage 1): source images/s and tiles/s. Readers: decoded + augmented images/s through a DataLoader with 0, 1 and 2
workers: stage 1 = MAE RandomResizedCrop to 224; stage 2 = SAM resize/pad to `--sam-size`,
64 masks decoded from RLE, flips, collate to SamBatch. Worker start-up is excluded (first
batch is a warm-up). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from data_prep.coco import convert_coco
from data_prep.composite import SHAPES, shape_polygon
from data_prep.images import convert_images
from data_prep.masks import convert_masks
from data_prep.pixels import Normalize
from data_prep.records import PixelOptions
from data_prep.shard_writer import ShardOptions
from sam_train.data.sample_images import SAMPLE_PHOTOS, load_sample_photo

# torch and Lightning are imported inside the reader benchmark only: converter workers are
# spawned and re-import this module, as `sam-prep` workers re-import only the light CLI.


def make_inputs(root: Path, n: int, anns_per_image: int = 12) -> tuple[Path, Path]:
    """n 640x480 JPEG crops of the sample photos and a COCO json of random polygons on them."""
    rng = np.random.default_rng(0)
    photos = [load_sample_photo(p).resize((960, 720)) for p in SAMPLE_PHOTOS]
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        x, y = int(rng.integers(0, 320)), int(rng.integers(0, 240))
        photos[i % len(photos)].crop((x, y, x + 640, y + 480)).save(
            root / "images" / f"{i:05d}.jpg", quality=90
        )
        images.append({"id": i, "file_name": f"{i:05d}.jpg", "width": 640, "height": 480})
        for _ in range(anns_per_image):
            r = float(rng.uniform(10, 120))
            cx, cy = float(rng.uniform(r, 640 - r)), float(rng.uniform(r, 480 - r))
            poly = shape_polygon(SHAPES[int(rng.integers(4))], cx, cy, r, rng)
            anns.append(
                {
                    "id": len(anns),
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "coco.json").write_text(json.dumps(coco))
    write_label_images(root / "labels", coco)
    return root / "images", root / "coco.json"


def write_label_images(out: Path, coco: dict) -> None:
    """The COCO polygons painted as one 16-bit instance label PNG per image (later objects on
    top), so the label-image converter gets the same objects as the COCO one."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True)
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        canvas = Image.new("I", (im["width"], im["height"]), 0)
        draw = ImageDraw.Draw(canvas)
        for k, a in enumerate(by_image.get(im["id"], []), start=1):
            poly = a["segmentation"][0]
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=k)
        label = np.asarray(canvas).astype(np.uint16)
        Image.fromarray(label).save(out / im["file_name"].replace(".jpg", ".png"))


def make_big(root: Path, n: int, side: int = 4096, objects: int = 800) -> Path:
    """n side x side uint16 TIFFs (smooth noise) with uint16 label images of `objects` boxes."""
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        small = rng.random((side // 8, side // 8)).astype(np.float32)
        img = ndimage.zoom(ndimage.gaussian_filter(small, 2), 8, order=1)
        tifffile.imwrite(root / "imgs" / f"slide{i}.tif", (img * 60000).astype(np.uint16))
        label = np.zeros((side, side), dtype=np.uint16)
        for v in range(1, objects + 1):
            y, x = rng.integers(0, side - 80, 2)
            label[y : y + int(rng.integers(10, 80)), x : x + int(rng.integers(10, 80))] = v
        tifffile.imwrite(root / "labels" / f"slide{i}.tif", label)
    return root


def bench_convert(images: Path, coco: Path, out: Path, n: int) -> list[dict]:
    rows = []
    labels = coco.parent / "labels"
    for workers in (1, 2):
        opts = ShardOptions(maxcount=max(1, n // 8), workers=workers, progress=False)
        for stage, run in (
            ("1 images", lambda o, opts=opts: convert_images(images, o, opts)),
            ("2 coco", lambda o, opts=opts: convert_coco(images, coco, o, opts)),
            ("2 masks", lambda o, opts=opts: convert_masks(images, labels, o, opts)),
        ):
            dest = out / f"{stage.split()[1]}_{workers}"
            t0 = time.perf_counter()
            manifest = run(dest)
            dt = time.perf_counter() - t0
            rows.append(
                {
                    "what": "convert",
                    "stage": stage,
                    "workers": workers,
                    "images_per_s": manifest["total"] / dt,
                }
            )
    return rows


def bench_tiles(big: Path, out: Path, n: int) -> list[dict]:
    """Tiling 4096 px 16-bit slides into 1024 px tiles, 1 and 2 workers (one slide per shard,
    so the two workers share the slides)."""
    pixels = PixelOptions(normalize=Normalize.parse("percentile:1,99.8"), tile=1024, overlap=128)
    rows = []
    for workers in (1, 2):
        opts = ShardOptions(maxcount=1, workers=workers, progress=False)
        for stage, run in (
            ("1 tiles", lambda o, opts=opts: convert_images(big / "imgs", o, opts, pixels)),
            (
                "2 tiles+masks",
                lambda o, opts=opts: convert_masks(big / "imgs", big / "labels", o, opts, pixels),
            ),
        ):
            dest = out / f"{stage.split()[1]}_{workers}"
            t0 = time.perf_counter()
            manifest = run(dest)
            dt = time.perf_counter() - t0
            rows.append(
                {
                    "what": "tile",
                    "stage": stage,
                    "workers": workers,
                    "images_per_s": n / dt,
                    "tiles_per_s": manifest["total"] / dt,
                }
            )
    return rows


def _rate(loader, n_batches: int, batch_size: int) -> float:
    it = iter(loader)
    next(it)  # warm-up: worker start, first shard open
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t0)


def bench_read(out: Path, n: int, sam_size: int) -> list[dict]:
    from sam_train.data.shard_datamodules import ShardMaeDataModule, ShardSamDataModule

    rows = []
    for workers in (0, 1, 2):
        common = dict(
            num_workers=workers, pin_memory=False, samples_per_epoch=10 * n, shuffle_buffer=64
        )
        mae = ShardMaeDataModule(str(out / "images_1"), img_size=224, batch_size=32, **common)
        sam = ShardSamDataModule(
            str(out / "coco_1"), img_size=sam_size, batch_size=4, max_masks=64, **common
        )
        for stage, dm, nb in (("1 mae 224", mae, 16), (f"2 sam {sam_size}", sam, 16)):
            rate = _rate(dm.train_dataloader(), nb, dm.batch_size)
            rows.append({"what": "read", "stage": stage, "workers": workers, "images_per_s": rate})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--sam-size", type=int, default=1024)
    p.add_argument("--big", type=int, default=4, help="4096 px 16-bit slides to tile")
    p.add_argument("--no-read", action="store_true", help="converters only (skip the readers)")
    p.add_argument("--json", type=str, default=None, help="also write the results here")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)  # each DataLoader worker is one core; keep the main process comparable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, coco = make_inputs(root / "in", a.images)
        rows = bench_convert(images, coco, root / "out", a.images)
        if not a.no_read:
            rows += bench_read(root / "out", a.images, a.sam_size)
        if a.big:
            big = make_big(root / "big", a.big)
            rows += bench_tiles(big, root / "out_big", a.big)
    print(f"{'what':8} {'stage':14} {'workers':>7} {'images/s':>10} {'tiles/s':>8}")
    for r in rows:
        tiles = f"{r['tiles_per_s']:>8.1f}" if "tiles_per_s" in r else ""
        print(f"{r['what']:8} {r['stage']:14} {r['workers']:>7} {r['images_per_s']:>10.1f} {tiles}")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "images": a.images,
        "big": a.big,
        "rows": rows,
    }
    print(json.dumps(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
