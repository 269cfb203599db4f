"""`--tile` and `--normalize`: a 16-bit image in overlapping tiles; every object's pieces, put
back at their tile origins, rebuild it exactly; pixels follow the recorded mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from formats_helpers import masks_by_id, save_label, shard_bytes, stored
from prep_helpers import image_folder, make_coco
from pycocotools.coco import COCO

from data_prep.coco import convert_coco
from data_prep.images import convert_images
from data_prep.masks import convert_masks
from data_prep.pixels import Normalize, percentiles
from data_prep.records import PixelOptions
from data_prep.rle import resize_masks
from data_prep.shard_writer import ShardOptions
from data_prep.tiling import tile_boxes

OPTS = ShardOptions(maxcount=1, progress=False)
H, W = 150, 200


@pytest.fixture(scope="module")
def big16(tmp_path_factory):
    """A 16-bit single-channel TIFF with a label image of 40 objects of all sizes."""
    root = tmp_path_factory.mktemp("big16")
    rng = np.random.default_rng(0)
    img = (rng.random((H, W)) * 3000 + 500).astype(np.uint16)
    label = np.zeros((H, W), dtype=np.uint16)
    for v in range(1, 41):
        y, x = int(rng.integers(0, H - 4)), int(rng.integers(0, W - 4))
        label[y : y + int(rng.integers(2, 40)), x : x + int(rng.integers(2, 40))] = v
    (root / "imgs").mkdir()
    tifffile.imwrite(root / "imgs" / "slide.tif", img)
    save_label(root / "labels" / "slide.png", label)
    return root, img, label


def _placed_back(got: dict) -> dict[int, np.ndarray]:
    """Union over tiles of each object's pieces, placed at the tile origins."""
    full: dict[int, np.ndarray] = {}
    for record, _ in got.values():
        t = record["image"]["tile"]
        for obj_id, m in masks_by_id(record).items():
            canvas = full.setdefault(obj_id, np.zeros((H, W), dtype=bool))
            canvas[t["y"] : t["y"] + m.shape[0], t["x"] : t["x"] + m.shape[1]] |= m
    return full


def test_tile_pieces_rebuild_every_object_and_pixels_follow_the_mapping(big16, tmp_path):
    root, img, label = big16
    pixels = PixelOptions(
        normalize=Normalize.parse("range:500,3500"), tile=64, overlap=16, tile_min_area=0
    )
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS, pixels)
    got = stored(tmp_path / "out")
    boxes = tile_boxes(H, W, 64, 16)
    assert len(boxes) == 12 and manifest["total"] == len(got) <= 12
    assert manifest["args"]["normalize"] == "range:500,3500" and manifest["args"]["tile"] == 64
    present = [v for v in range(1, 41) if (label == v).any()]
    rebuilt = _placed_back(got)
    assert sorted(rebuilt) == present
    for v in present:
        assert np.array_equal(rebuilt[v], label == v), v
    expected8 = np.clip((img.astype(np.float32) - 500) * (255 / 3000) + 0.5, 0, 255).astype(
        np.uint8
    )
    for key, (record, rgb) in got.items():
        meta, t = record["image"], record["image"]["tile"]
        assert key.endswith(f"_y{t['y']:05d}_x{t['x']:05d}")
        assert (t["source_width"], t["source_height"]) == (W, H)
        assert meta["normalize"] == {"lo": 500.0, "hi": 3500.0}
        want = expected8[t["y"] : t["y"] + 64, t["x"] : t["x"] + 64]
        assert np.array_equal(rgb, np.repeat(want[:, :, None], 3, 2))  # PNG: lossless
        for a, m in zip(record["annotations"], masks_by_id(record).values()):
            assert a["area"] == m.sum() and a["category"] is None


def test_small_cut_pieces_are_dropped_and_counted(big16, tmp_path):
    root, _, label = big16
    pixels = PixelOptions(normalize=Normalize("minmax"), tile=64, overlap=16, tile_min_area=30)
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS, pixels)
    assert manifest["skipped"]["tile_fragment_too_small"] > 0
    for record, _ in stored(tmp_path / "out").values():
        t = record["image"]["tile"]
        for obj_id, m in masks_by_id(record).items():
            whole = (label == obj_id)[t["y"] : t["y"] + 64, t["x"] : t["x"] + 64]
            cut = whole.sum() < (label == obj_id).sum()
            assert not cut or m.sum() >= 30


def test_16bit_without_normalize_is_skipped_and_says_how(big16, tmp_path):
    root, _, _ = big16
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS)
    assert manifest["total"] == 0 and manifest["skipped"] == {"image_not_8bit": 1}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_histogram_percentiles_equal_numpy(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    arr = rng.integers(max(info.min, -3000), min(info.max, 4000), (37, 53)).astype(dtype)
    qs = (0, 1, 37.5, 99.8, 100)
    assert percentiles(arr, qs) == pytest.approx(np.percentile(arr, qs).tolist(), abs=1e-9)


def test_percentile_mapping_of_float_images(tmp_path):
    arr = np.linspace(-1.0, 1.0, 100 * 50, dtype=np.float32).reshape(50, 100)
    out, mapping = Normalize.parse("percentile:1,99").apply(arr)
    lo, hi = np.percentile(arr, (1, 99))
    assert mapping == pytest.approx({"lo": lo, "hi": hi})
    flat = out.ravel()  # values rise along the array: the lowest 1% -> 0, the top 1% -> 255
    assert (flat[:50] == 0).all() and (flat[-50:] == 255).all() and 0 < flat[2500] < 255


def test_coco_annotations_in_tiles_rebuild_ann_to_mask(tmp_path):
    images, ann = make_coco(tmp_path)
    pixels = PixelOptions(tile=24, overlap=8, tile_min_area=0)
    manifest = convert_coco(images, ann, tmp_path / "out", OPTS, pixels)
    coco = COCO(str(ann))
    got = stored(tmp_path / "out")
    assert manifest["skipped"]["polygon_too_few_points"] == 1
    for image_id in (1, 2):
        info = coco.imgs[image_id]
        h, w = info["height"], info["width"]
        full: dict = {}
        for record, _ in got.values():
            if record["image"]["id"] != image_id:
                continue
            t = record["image"]["tile"]
            for a, m in zip(record["annotations"], masks_by_id(record).values()):
                canvas = full.setdefault(a["id"], np.zeros((h, w), dtype=bool))
                canvas[t["y"] : t["y"] + m.shape[0], t["x"] : t["x"] + m.shape[1]] |= m
        for a in coco.imgToAnns[image_id]:
            if a["id"] in (13, 14):  # the 2-point polygon and the one outside the image
                continue
            assert np.array_equal(full[a["id"]], coco.annToMask(a).astype(bool)), a["id"]


def test_stage1_images_in_tiles_carry_their_origin(tmp_path):
    src = image_folder(tmp_path / "src", 2, size=(40, 30))
    pixels = PixelOptions(tile=16, overlap=4)
    manifest = convert_images(src, tmp_path / "out", OPTS, pixels)
    got = stored(tmp_path / "out")
    assert manifest["total"] == len(got) == 2 * len(tile_boxes(30, 40, 16, 4))
    origins = sorted((r["image"]["tile"]["y"], r["image"]["tile"]["x"]) for r, _ in got.values())
    assert origins[:3] == [(0, 0), (0, 0), (0, 12)]
    assert all(rgb.shape == (16, 16, 3) for _, rgb in got.values())
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["args"]["overlap"] == 4


def test_normalized_and_resized_masks_follow_the_image(big16, tmp_path):
    root, _, label = big16
    pixels = PixelOptions(max_side=100, normalize=Normalize("minmax"))
    convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS, pixels)
    ((record, rgb),) = stored(tmp_path / "out").values()
    assert rgb.shape == (75, 100, 3) and record["image"]["normalize"]["hi"] > 3000
    for obj_id, m in masks_by_id(record).items():
        assert np.array_equal(m, resize_masks((label == obj_id)[None], 75, 100)[0]), obj_id


def test_tiled_reruns_are_byte_identical(big16, tmp_path):
    root, _, _ = big16
    pixels = PixelOptions(normalize=Normalize.parse("percentile:1,99.8"), tile=64, overlap=16)
    for name in ("one", "again"):
        convert_masks(root / "imgs", root / "labels", tmp_path / name, OPTS, pixels)
    one = shard_bytes(tmp_path / "one")
    assert one and one == shard_bytes(tmp_path / "again")


def test_maxcount_counts_tiles_from_the_image_headers(tmp_path):
    src = image_folder(tmp_path / "src", 4, size=(40, 30))  # 9 tiles each
    pixels = PixelOptions(tile=16, overlap=4)
    small = convert_images(src, tmp_path / "a", ShardOptions(maxcount=10, progress=False), pixels)
    assert [s["count"] for s in small["shards"]] == [9, 9, 9, 9]  # an image's tiles stay together
    big = convert_images(src, tmp_path / "b", ShardOptions(maxcount=18, progress=False), pixels)
    assert [s["count"] for s in big["shards"]] == [18, 18]


def test_image_size_from_tiff_headers(big16, tmp_path):
    from data_prep.pixels import image_hw

    root, _, _ = big16
    tifffile.imwrite(tmp_path / "chw.tif", np.zeros((3, 20, 30), np.uint16))
    tifffile.imwrite(tmp_path / "hwc.tif", np.zeros((20, 30, 3), np.uint8))
    assert image_hw(root / "imgs" / "slide.tif") == (H, W)
    assert image_hw(tmp_path / "chw.tif") == image_hw(tmp_path / "hwc.tif") == (20, 30)
    assert image_hw(tmp_path / "missing.tif") is None
