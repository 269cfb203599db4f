"""Segment everything: our MaskGenerator returns the masks segment-anything's generator returns,
on the same weights (a tiny SAM trained here for seconds, so masks survive the filters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

amg = pytest.importorskip("segment_anything")

from amg_helpers import SCENE_HW, shapes_scene, trained_tiny_sam  # noqa: E402

from sam_train.automatic import MaskGenerator  # noqa: E402
from sam_train.weights.keymaps import sam_state_to_official  # noqa: E402
from sam_train.weights.official import build_official_sam  # noqa: E402

# thresholds for a model trained for seconds: its predicted IoUs and logit margins are lower
# than a real SAM's, so the default 0.88 / 0.95 / offset 1 would keep nothing
SETTINGS = dict(
    points_per_side=16,
    pred_iou_thresh=0.3,
    stability_score_thresh=0.6,
    stability_score_offset=0.5,
    output_mode="coco_rle",
)


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ours = trained_tiny_sam(steps=160)
    ref = build_official_sam(ours.architecture)
    ref.load_state_dict(sam_state_to_official(ours.state_dict()), strict=True)
    yield ours, ref.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A training scene at 4x (192 x 256): the model sees it at 48 x 64, masks come back at
    full size, so one pixel flipped by float rounding cannot move a mask's IoU by 1%."""
    scene, _ = shapes_scene(*SCENE_HW, seed=0)
    return scene.repeat(4, axis=0).repeat(4, axis=1)


def _match(ours: list[dict], theirs: list[dict]) -> np.ndarray:
    """For each of our masks, the best IoU with any of theirs (and the reverse), [2, N]."""
    a = [r["segmentation"] for r in ours]
    b = [r["segmentation"] for r in theirs]
    iou = mask_utils.iou(a, b, [0] * len(b))  # [len(a), len(b)]
    return iou.max(axis=1), iou.max(axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("crop_n_layers, at_least", [(0, 12), (1, 30)])
def test_same_masks_as_segment_anything(models, image, crop_n_layers: int, at_least: int) -> None:
    ours_model, ref_model = models
    kwargs = dict(SETTINGS, crop_n_layers=crop_n_layers)
    ours = MaskGenerator(ours_model, **kwargs).generate(image)
    theirs = amg.SamAutomaticMaskGenerator(ref_model, **kwargs).generate(image)

    assert len(ours) == len(theirs) >= at_least
    ours_best, theirs_best = _match(ours, theirs)
    assert ours_best.min() > 0.99 and theirs_best.min() > 0.99
    # the records carry the same fields and, for the matched masks, the same scores
    assert set(ours[0]) == set(theirs[0])
    by_point = {(tuple(r["point_coords"][0]), r["area"]): r for r in theirs}
    matched = [by_point.get((tuple(r["point_coords"][0]), r["area"])) for r in ours]
    pairs = [(r, t) for r, t in zip(ours, matched) if t is not None]
    assert len(pairs) >= 0.8 * len(ours)
    for r, t in pairs:
        assert r["predicted_iou"] == pytest.approx(t["predicted_iou"], abs=1e-4)
        assert r["stability_score"] == pytest.approx(t["stability_score"], abs=1e-2)
        assert r["bbox"] == t["bbox"]
        assert [float(v) for v in r["crop_box"]] == [float(v) for v in t["crop_box"]]
    if crop_n_layers:
        assert len({tuple(r["crop_box"]) for r in ours}) > 1  # crops contributed masks
