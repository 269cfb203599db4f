"""`sam-prep coco` on an LVIS-shaped json: images found through `coco_url`, LVIS's category and
image fields, masks equal to pycocotools' decoding."""

from __future__ import annotations

import json

import numpy as np
from formats_helpers import masks_by_id, stored
from prep_helpers import write_image
from pycocotools.coco import COCO

from data_prep.coco import convert_coco
from data_prep.shard_writer import ShardOptions

URL = "http://images.cocodataset.org"


def _lvis(root):
    """Two images in COCO's split folders (as LVIS expects), one only by its bare name, one
    missing; categories with LVIS's fields; polygon annotations without `iscrowd`."""
    write_image(root / "coco" / "train2017" / "000000000009.jpg", 40, 30, seed=1)
    write_image(root / "coco" / "val2017" / "000000000139.jpg", 36, 32, seed=2)
    write_image(root / "coco" / "000000000285.jpg", 30, 30, seed=3)  # user flattened the split

    def image(i, split, w, h):
        return {
            "id": i,
            "coco_url": f"{URL}/{split}/{i:012d}.jpg",
            "width": w,
            "height": h,
            "license": 1,
            "flickr_url": "",
            "date_captured": "",
            "neg_category_ids": [3],
            "not_exhaustive_category_ids": [2],
        }

    def category(i, name, freq):
        return {
            "id": i,
            "name": name,
            "synonyms": [name],
            "def": f"a {name}",
            "synset": f"{name}.n.01",
            "frequency": freq,
            "image_count": 1,
            "instance_count": 1,
        }

    def ann(i, image_id, cat, poly):
        xs, ys = poly[0::2], poly[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return {
            "id": i,
            "image_id": image_id,
            "category_id": cat,
            "segmentation": [poly],
            "area": 1.0,
            "bbox": box,
        }

    lvis = {
        "info": {},
        "licenses": [],
        "images": [
            image(9, "train2017", 40, 30),
            image(139, "val2017", 36, 32),
            image(285, "val2017", 30, 30),
            image(632, "val2017", 20, 20),  # not on disk
        ],
        "categories": [
            category(1, "aerosol_can", "r"),
            category(2, "apple", "f"),
            category(3, "zebra", "c"),
        ],
        "annotations": [
            ann(1, 9, 1, [2.0, 2.0, 20.0, 3.0, 12.0, 20.0]),
            ann(2, 9, 2, [25.0, 5.0, 38.0, 5.0, 38.0, 25.0, 25.0, 25.0]),
            ann(3, 139, 2, [3.5, 4.5, 30.0, 6.0, 10.0, 28.0]),
            ann(4, 285, 1, [1.0, 1.0, 28.0, 1.0, 28.0, 28.0]),
        ],
    }
    path = root / "lvis_v1_val.json"
    path.write_text(json.dumps(lvis))
    return root / "coco", path


def test_lvis_json_converts_with_its_fields_and_exact_masks(tmp_path):
    images, ann = _lvis(tmp_path)
    manifest = convert_coco(images, ann, tmp_path / "out", ShardOptions(progress=False))
    assert manifest["total"] == 3 and manifest["skipped"] == {"image_missing": 1}
    got = {r["image"]["id"]: r for r, _ in stored(tmp_path / "out").values()}
    assert got[9]["image"]["file_name"] == "train2017/000000000009.jpg"
    assert got[285]["image"]["file_name"] == "000000000285.jpg"
    assert got[139]["image"]["neg_category_ids"] == [3]
    assert got[139]["image"]["not_exhaustive_category_ids"] == [2]
    lvis = COCO(str(ann))
    for image_id, record in got.items():
        masks = masks_by_id(record)
        for a in lvis.imgToAnns[image_id]:
            assert np.array_equal(masks[a["id"]], lvis.annToMask(a).astype(bool))
    assert [a["category"] for a in got[9]["annotations"]] == ["aerosol_can", "apple"]
