"""Stage-2 sample preparation: SAM's resize + top-left pad, mask filters and sampling, boxes
from masks, flips that keep image/masks/boxes together, and the SamBatch collate."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam_train.data.batch import SamBatch
from sam_train.data.sam_samples import SamSamplePrep, collate_sam, masks_to_boxes, resized_hw
from sam_train.data.shards import SkipSample
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD


def _sample(masks: list[np.ndarray], w: int = 40, h: int = 20, names=None) -> dict:
    """A raw shard sample: a left-dark/right-bright png and RLE masks."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, w // 2 :] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    anns = []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append(
            {
                "id": i,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "area": int(m.sum()),
                "category_id": i,
                "category": (names or [None] * 99)[i],
            }
        )
    rec = {"image": {"width": w, "height": h, "id": 7, "file_name": "x.png"}, "annotations": anns}
    return {"__key__": "x", "png": buf.getvalue(), "json": json.dumps(rec).encode()}


def _box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_resize_pad_top_left_and_boxes():
    m = _box_mask(20, 40, 2, 6, 4, 10)
    item = SamSamplePrep(80, min_mask_area=1)(_sample([m], names=["cat"]), random.Random(0))
    assert resized_hw(20, 40, 80) == (40, 80) and item.image_hw == (40, 80)
    assert item.image.shape == (3, 80, 80) and item.masks.shape == (1, 40, 80)  # padded in collate
    assert torch.all(item.image[:, 40:, :] == 0)  # padding is zero after normalisation
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(item.image[:, 20, 70], white, atol=1e-4)
    assert item.masks[0].sum() == 8 * 12  # 2x upscale of a 4 x 6 box
    assert item.boxes[0].tolist() == [8, 4, 20, 12]
    assert item.categories == ["cat"] and item.category_ids.tolist() == [0] and item.image_id == 7


def test_filters_and_sampling():
    big = np.ones((20, 40), dtype=bool)
    tiny = _box_mask(20, 40, 0, 1, 0, 2)
    good = [_box_mask(20, 40, i, i + 5, 2 * i, 2 * i + 6) for i in range(10)]
    prep = SamSamplePrep(40, max_masks=4, min_mask_area=4, max_mask_fraction=0.9)
    item = prep(_sample([big, tiny] + good), random.Random(0))
    assert len(item.masks) == 4 and set(item.category_ids.tolist()) <= set(range(2, 12))
    other = prep(_sample([big, tiny] + good), random.Random(1))
    assert other.category_ids.tolist() != item.category_ids.tolist()  # a random subset
    with pytest.raises(SkipSample, match="no_masks"):
        prep(_sample([big, tiny]), random.Random(0))


def test_hflip_keeps_image_masks_and_boxes_together():
    m = _box_mask(20, 40, 2, 6, 4, 10)
    prep = SamSamplePrep(80, min_mask_area=1, hflip=True)
    rng = next(random.Random(s) for s in range(100) if random.Random(s).random() < 0.5)
    plain = SamSamplePrep(80, min_mask_area=1)(_sample([m]), random.Random(0))
    flipped = prep(_sample([m]), rng)
    h, w = flipped.image_hw
    assert torch.equal(flipped.masks[0], plain.masks[0].flip(-1))
    assert torch.equal(flipped.image[:, :h, :w], plain.image[:, :h, :w].flip(-1))
    assert torch.all(flipped.image[:, h:, :] == 0)  # still top-left
    x0, y0, x1, y1 = plain.boxes[0].tolist()
    assert flipped.boxes[0].tolist() == [w - x1, y0, w - x0, y1]


def test_masks_to_boxes_matches_coco_bbox():
    m = _box_mask(20, 40, 3, 9, 5, 17)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    x, y, bw, bh = mask_utils.toBbox(rle)
    assert masks_to_boxes(m[None])[0].tolist() == [x, y, x + bw, y + bh]
    assert masks_to_boxes(np.zeros((1, 4, 4), bool))[0].tolist() == [0, 0, 0, 0]


def test_collate_pads_masks():
    prep = SamSamplePrep(32, min_mask_area=1)
    a = prep(_sample([_box_mask(20, 40, 0, 5, 0, 5)], names=["cat"]), random.Random(0))
    b = prep(
        _sample([_box_mask(20, 40, 0, 5, 0, 5), _box_mask(20, 40, 9, 15, 9, 15)]), random.Random(0)
    )
    batch = collate_sam([a, b])
    assert isinstance(batch, SamBatch)
    assert batch.images.shape == (2, 3, 32, 32) and batch.masks.shape == (2, 2, 32, 32)
    assert batch.mask_valid.tolist() == [[True, False], [True, True]]
    assert batch.category_ids[0, 1] == -1 and batch.categories[0] == ["cat", None]
    assert batch.boxes.shape == (2, 2, 4) and batch.image_hw.tolist() == [[16, 32], [16, 32]]
    assert not batch.masks[0, 1].any()


@pytest.mark.parametrize("hw", [(7, 30), (60, 90)])
def test_resize_decoded_is_nearest_both_ways(hw):
    from data_prep.rle import resize_masks
    from sam_train.data.sam_samples import resize_decoded

    rng = np.random.default_rng(0)
    masks = rng.random((3, 20, 40)) > 0.5  # [n, H, W]
    full = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))  # pycocotools' layout
    assert np.array_equal(resize_decoded(full, *hw).view(bool), resize_masks(masks, *hw))
