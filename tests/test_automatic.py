"""Segment everything, stage by stage: grids, crops, stability, boxes, RLE, clean-up, settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sam
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou

from sam_train.automatic import MaskGenerator
from sam_train.automatic.grid import crop_boxes, layer_point_grids
from sam_train.automatic.mask_ops import (
    count_above,
    decode_rle,
    encode_rle,
    logits_to_boxes,
    masks_to_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
    uncompressed_rle,
)

ref = pytest.importorskip("segment_anything.utils.amg")


pytestmark = pytest.mark.usefixtures("one_thread")


def one_block_sam():
    """One encoder block on 8 px patches: a 64 px image is 8 x 8 embeddings in 4 x 4 windows."""
    return tiny_sam(
        encoder_depth=1,
        encoder_global_attn_indexes=(0,),
        patch_size=8,
        window_size=4,
        decoder_mlp_dim=32,
        decoder_num_heads=2,
    ).eval()


@pytest.mark.parametrize("n, layers, factor", [(32, 0, 1), (16, 2, 2), (5, 1, 1)])
def test_point_grids_are_segment_anythings(n: int, layers: int, factor: int) -> None:
    ours = layer_point_grids(n, layers, factor)
    theirs = ref.build_all_layer_point_grids(n, layers, factor)
    assert len(ours) == len(theirs) == layers + 1
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize(
    "hw, layers", [((480, 640), 0), ((480, 640), 2), ((375, 500), 3), ((7, 9), 1)]
)
def test_crop_boxes_are_segment_anythings(hw, layers) -> None:
    assert crop_boxes(hw, layers, 512 / 1500) == ref.generate_crop_boxes(hw, layers, 512 / 1500)


def test_mask_ops_match_segment_anything() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, 30, generator=g) * 3
    logits[2] = -5  # an empty mask
    expected = ref.calculate_stability_score(logits, 0.0, 1.0)
    torch.testing.assert_close(stability_score(logits, 0.0, 1.0), expected, equal_nan=True)
    masks = logits > 0
    assert torch.equal(masks_to_boxes(masks), ref.batched_mask_to_box(masks))
    assert torch.equal(logits_to_boxes(logits, 0.0), ref.batched_mask_to_box(masks))
    boxes = torch.tensor([[0, 0, 10, 10], [25, 5, 29, 19], [3, 3, 8, 8]])
    crop, image = [10, 10, 40, 30], [0, 0, 40, 60]
    assert torch.equal(
        near_crop_edge(boxes, crop, image), ref.is_box_near_crop_edge(boxes, crop, image)
    )
    # COCO RLE: the same strings as segment-anything's uncompressed RLE through pycocotools
    theirs = [ref.coco_encode_rle(r) for r in ref.mask_to_rle_pytorch(masks)]
    ours = encode_rle(masks)
    assert [r["counts"] for r in ours] == [r["counts"] for r in theirs]
    assert [uncompressed_rle(r)["counts"] for r in ours] == [
        r["counts"] for r in ref.mask_to_rle_pytorch(masks)
    ]
    assert np.array_equal(decode_rle(ours[0]), masks[0].numpy())


def test_pixel_counts_are_exact_past_the_int16_row_sums() -> None:
    wide = torch.ones(2, 3, 40000)  # rows of more than 32767 pixels take the int32 path
    wide[1, :, :5] = -1
    assert count_above(wide, 0.0).tolist() == [120000, 119985]
    full = torch.ones(1, 900, 32767)
    assert count_above(full, 0.0).tolist() == [900 * 32767]


@pytest.mark.parametrize(
    "nh, nw", [(1024, 1024), (768, 1024), (1024, 683), (3, 1), (1021, 5), (5, 1021), (383, 17)]
)
def test_upsampling_the_unpadded_part_equals_upsampling_all_then_cutting(nh, nw) -> None:
    from sam_train.automatic.generator import upsample_unpadded

    logits = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(nh + nw))
    whole = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_unpadded(logits, 1024, nh, nw), whole[..., :nh, :nw])


def test_small_holes_are_filled_and_small_islands_dropped() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:30, 5:30] = True
    mask[10:12, 10:12] = False  # a 4-pixel hole
    mask[35:37, 35:37] = True  # a 4-pixel island
    filled, changed = remove_small_regions(mask, 10, "holes")
    assert changed and filled[10:12, 10:12].all() and filled[35:37, 35:37].all()
    cleaned, changed = remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[35:37, 35:37].any() and cleaned.sum() == 25 * 25
    same, changed = remove_small_regions(cleaned, 10, "islands")
    assert not changed and np.array_equal(same, cleaned)
    tiny = np.zeros((10, 10), dtype=bool)
    tiny[1, 1] = tiny[5:7, 5:7] = True  # every island small: the largest stays
    kept, _ = remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 4 and kept[5:7, 5:7].all()


def test_generate_returns_segment_anything_records_in_each_output_mode() -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    settings = dict(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    records = {
        mode: MaskGenerator(one_block_sam(), output_mode=mode, **settings).generate(image)
        for mode in ("coco_rle", "binary_mask", "uncompressed_rle")
    }
    coco = records["coco_rle"]
    assert len(coco) > 0
    assert set(coco[0]) == {
        "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score",
        "crop_box",
    }  # fmt: skip
    for c, b, u in zip(coco, records["binary_mask"], records["uncompressed_rle"]):
        mask = decode_rle(c["segmentation"])
        assert mask.shape == (40, 56) and np.array_equal(b["segmentation"], mask)
        assert c["area"] == mask.sum() == int(mask_utils.area(c["segmentation"]))
        assert np.array_equal(decode_rle(u["segmentation"]), mask)
        assert c["crop_box"] == [0, 0, 56, 40]


def box_ious_above(records: list[dict], thresh: float) -> int:
    """How many pairs of records have box IoU above `thresh` (boxes from their xywh `bbox`)."""
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]  # xyxy
    iou = box_iou(boxes, boxes).triu(diagonal=1)
    return int((iou > thresh).sum())


def test_no_two_masks_of_a_crop_overlap_above_box_nms_thresh() -> None:
    """One crop (the whole image), no filters before the NMS: a random tiny SAM's 48 masks
    (16 points x 3) all span about the whole image, so nearly every pair is a duplicate."""
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    settings = dict(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    every = MaskGenerator(one_block_sam(), box_nms_thresh=1.0, **settings).generate(image)
    assert len(every) == 48 and box_ious_above(every, 0.7) > 0  # work for the NMS
    kept = MaskGenerator(one_block_sam(), box_nms_thresh=0.7, **settings).generate(image)
    assert box_ious_above(kept, 0.7) == 0
    assert len(kept) > 0


def test_clean_up_leaves_no_small_islands() -> None:
    image = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    settings = dict(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    raw = MaskGenerator(one_block_sam(), output_mode="binary_mask", **settings).generate(image)
    clean = MaskGenerator(
        one_block_sam(), output_mode="binary_mask", min_mask_region_area=20, **settings
    ).generate(image)
    from scipy import ndimage

    def smallest_island(mask):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        return np.bincount(labels.ravel())[1:].min() if n else 0

    assert any(smallest_island(r["segmentation"]) < 20 for r in raw)  # there was work to do
    assert all(smallest_island(r["segmentation"]) >= 20 for r in clean if r["area"] >= 20)


def test_the_image_is_embedded_once_per_crop() -> None:
    sam = one_block_sam()
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    gen = MaskGenerator(sam, points_per_side=8, points_per_batch=16, crop_n_layers=1)
    gen.generate(np.zeros((64, 64, 3), dtype=np.uint8))
    assert len(calls) == 1 + 4  # the whole image, then the four first-layer crops


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(points_per_side=0), "points_per_side=0"),
        (dict(points_per_side=None), "exactly one of points_per_side or point_grids"),
        (dict(output_mode="png"), "output_mode='png'"),
        (dict(points_per_batch=0), "points_per_batch=0"),
        (dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2), "no points"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        MaskGenerator(one_block_sam(), **settings)


def test_an_image_too_small_for_the_crops_is_refused_with_a_layer_that_fits() -> None:
    gen = MaskGenerator(one_block_sam(), points_per_side=8, crop_n_layers=3)
    with pytest.raises(ValueError, match=r"too small for crop_n_layers=3.*crop_n_layers=2"):
        gen.generate(np.zeros((30, 40, 3), dtype=np.uint8))


def test_one_embedding_shared_by_all_prompts_decodes_as_per_prompt_copies() -> None:
    """The decoder projects a shared image embedding once (segment everything's case); the
    masks, scores and gradients equal those of K explicit copies."""
    sam = one_block_sam()
    emb = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    k = 5
    points = (torch.rand(k, 2, 2) * 64, torch.tensor([[1, 0]] * k))
    shared, shared_iou = sam.decode(emb, points=points)
    copies, copies_iou = sam.decode(emb.expand(k, -1, -1, -1).contiguous(), points=points)
    torch.testing.assert_close(shared, copies, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_iou, copies_iou, atol=1e-5, rtol=1e-5)
    (g_shared,) = torch.autograd.grad(shared.square().sum(), emb)
    (g_copies,) = torch.autograd.grad(copies.square().sum(), emb)
    torch.testing.assert_close(g_shared, g_copies, atol=1e-4, rtol=1e-4)
