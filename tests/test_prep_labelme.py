"""`sam-prep labelme`: each shape type read back as labelme itself draws it (a full-size PIL
canvas), group ids merged, points ignored and counted, images on disk or embedded."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from formats_helpers import masks_by_id, stored
from PIL import Image, ImageDraw
from prep_helpers import write_image

from data_prep.labelme import convert_labelme
from data_prep.records import PixelOptions
from data_prep.shard_writer import ShardOptions
from data_prep.tiling import tile_boxes

H, W = 48, 64


def _labelme_draw(kind: str, points: list) -> np.ndarray:
    """The reference: labelme's drawing on a full-size canvas."""
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [tuple(p) for p in points]
    if kind == "polygon":
        draw.polygon(xy, outline=1, fill=1)
    elif kind == "rectangle":
        draw.rectangle(xy, outline=1, fill=1)
    else:
        (cx, cy), (px, py) = xy
        r = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def _png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _shape(label, kind, points, group_id=None, **extra) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind, **extra}


POLY = [[10.3, 5.7], [40.2, 8.1], [30.5, 30.9], [12.0, 25.5]]
RECT = [[50, 40], [44, 30]]  # corners in any order
CIRCLE = [[20.5, 35.2], [26.0, 38.0]]
EDGE_POLY = [[-5, -5], [8.6, -3], [6.2, 9.4]]  # partly outside the image
GROUP = ([[2, 40], [8, 46]], [[10, 40], [14, 46]])
MASK = np.zeros((6, 9), dtype=bool)
MASK[1:5, 2:8] = True
MASK[2, 4] = False


@pytest.fixture(scope="module")
def labelme_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelme")
    write_image(root / "photos" / "a.jpg", W, H, seed=1)
    shapes = [
        _shape("cat", "polygon", POLY),
        _shape("box", "rectangle", RECT),
        _shape("ball", "circle", CIRCLE),
        _shape("cat", "polygon", EDGE_POLY),
        _shape("pair", "rectangle", GROUP[0], group_id=3),
        _shape("pair", "rectangle", GROUP[1], group_id=3),
        _shape("blob", "mask", [[50, 2], [59, 8]], mask=_png_b64(MASK)),
        _shape("eye", "point", [[5, 5]]),
        _shape("edge", "linestrip", [[1, 1], [5, 5], [9, 1]]),
        _shape("cat", "polygon", [[1, 1], [5, 5]]),  # 2 points
    ]
    doc = {"shapes": shapes, "imagePath": "../photos/a.jpg", "imageHeight": H, "imageWidth": W}
    (root / "ann").mkdir()
    (root / "ann" / "a.json").write_text(json.dumps(doc))
    # embedded image only (its imagePath points nowhere)
    png = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(png, format="PNG")
    embedded = {
        "shapes": [_shape("box", "rectangle", RECT)],
        "imagePath": "gone/b.png",
        "imageData": base64.b64encode(png.getvalue()).decode(),
    }
    (root / "ann" / "b.json").write_text(json.dumps(embedded))
    missing = {"shapes": [_shape("box", "rectangle", RECT)], "imagePath": "nowhere.jpg"}
    (root / "ann" / "c.json").write_text(json.dumps(missing))
    (root / "ann" / "d.json").write_text(
        json.dumps({"shapes": [_shape("eye", "point", [[1, 1]])], "imagePath": "../photos/a.jpg"})
    )
    (root / "ann" / "other.json").write_text('{"not": "labelme"}')
    return root


def test_every_shape_type_reads_back_as_labelme_draws_it(labelme_dir, tmp_path):
    manifest = convert_labelme(labelme_dir / "ann", tmp_path / "out", ShardOptions(progress=False))
    got = stored(tmp_path / "out")
    assert sorted(got) == ["a", "b"]
    record, rgb = got["a"]
    assert (
        rgb.shape == (H, W, 3) and record["image"]["file_name"] == "a.jpg"
    )  # outside the folder: its name
    names = [a["category"] for a in record["annotations"]]
    assert names == ["cat", "box", "ball", "cat", "pair", "blob"]
    masks = list(masks_by_id(record).values())
    pair = _labelme_draw("rectangle", GROUP[0]) | _labelme_draw("rectangle", GROUP[1])
    placed = np.zeros((H, W), dtype=bool)
    placed[2:8, 50:59] = MASK
    expected = [
        _labelme_draw("polygon", POLY),
        _labelme_draw("rectangle", sorted(RECT)),
        _labelme_draw("circle", CIRCLE),
        _labelme_draw("polygon", EDGE_POLY),
        pair,
        placed,
    ]
    for name, got_mask, want in zip(names, masks, expected):
        assert np.array_equal(got_mask, want), name
    categories = manifest["args"]["categories"]
    assert [categories[str(a["category_id"])] for a in record["annotations"]] == names
    (b_record, b_rgb) = got["b"]
    assert (b_rgb == 90).all() and b_record["annotations"][0]["category"] == "box"
    assert b_record["image"]["file_name"] == "b.png"  # embedded: imagePath's name
    assert manifest["skipped"] == {
        "image_missing": 1,
        "not_labelme_json": 1,
        "image_without_masks": 1,  # d: a point only
        "shape_point_ignored": 2,
        "shape_line_ignored": 1,
        "polygon_too_few_points": 1,
    }


def test_labelme_in_tiles(labelme_dir, tmp_path):
    pixels = PixelOptions(tile=32, overlap=8, tile_min_area=0)
    convert_labelme(labelme_dir / "ann", tmp_path / "out", ShardOptions(progress=False), pixels)
    got = stored(tmp_path / "out")
    assert {k.split("_y")[0] for k in got} == {"a", "b"}
    assert all(r["image"]["tile"]["source_width"] == W for r, _ in got.values())


def test_shard_folders_inside_the_input_are_not_read_as_input(labelme_dir, tmp_path):
    import shutil

    src = shutil.copytree(labelme_dir, tmp_path / "copy") / "ann"
    first = convert_labelme(src, src / "shards", ShardOptions(progress=False))
    again = convert_labelme(src, src / "more", ShardOptions(progress=False))
    assert first["skipped"] == again["skipped"] and first["total"] == again["total"] == 2


def test_image_path_from_another_machine_is_found_beside_the_json(tmp_path):
    write_image(tmp_path / "x.png", W, H, seed=3)
    doc = {"shapes": [_shape("box", "rectangle", RECT)], "imagePath": "C:\\Users\\me\\x.png"}
    (tmp_path / "scan.json").write_text(json.dumps(doc))
    manifest = convert_labelme(tmp_path, tmp_path / "out", ShardOptions(progress=False))
    assert manifest["total"] == 1 and manifest["skipped"] == {}


def test_keep_empty_keeps_a_file_without_area_shapes_and_empty_tiles(labelme_dir, tmp_path):
    opts = ShardOptions(progress=False)
    whole = convert_labelme(labelme_dir / "ann", tmp_path / "whole", opts, keep_empty=True)
    assert whole["total"] == 3 and whole["skipped"]["kept_without_masks"] == 1
    pixels = PixelOptions(tile=32, overlap=8)
    tiles = convert_labelme(labelme_dir / "ann", tmp_path / "tiles", opts, pixels, True)
    assert tiles["total"] == 3 * len(tile_boxes(H, W, 32, 8))  # none left out
    empty = [r for r, _ in stored(tmp_path / "tiles").values() if not r["annotations"]]
    assert len(empty) == tiles["skipped"]["kept_without_masks"] >= 4
