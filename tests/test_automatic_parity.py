"""Segment everything: our MaskGenerator returns exactly the records segment-anything's generator
returns, on the same model (a tiny SAM trained here for seconds, so masks survive the filters).

Both generators run the same image encoder, prompt encoder and mask decoder modules, so what is
compared is everything around them: point grids, crops, batching, the IoU, stability and
crop-edge filters, boxes, NMS within and between crops, RLE encoding and the record fields.
The modules' own agreement with segment-anything's is pinned with float tolerances in
test_sam_reference.py. Comparing two separately computed models here made the test depend on
the CPU: logits that differ by ~1e-5 flip pixels where a briefly trained model's logits are
near zero, a one-pixel box change crosses the 0.7 box-IoU threshold for one of the hundreds of
box pairs near it, and NMS keeps a different mask on some CPUs' kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):  # see the module docstring
        setattr(ref, part, getattr(ours, part))
    yield ours, ref.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A training scene at 4x (192 x 256): the model sees it at 48 x 64, masks come back at
    full size, so one pixel flipped by float rounding cannot move a mask's IoU by 1%."""
    scene, _ = shapes_scene(*SCENE_HW, seed=0)
    return scene.repeat(4, axis=0).repeat(4, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("crop_n_layers, at_least", [(0, 12), (1, 30)])
def test_same_masks_as_segment_anything(models, image, crop_n_layers: int, at_least: int) -> None:
    ours_model, ref_model = models
    kwargs = dict(SETTINGS, crop_n_layers=crop_n_layers)
    ours = MaskGenerator(ours_model, **kwargs).generate(image)
    theirs = amg.SamAutomaticMaskGenerator(ref_model, **kwargs).generate(image)

    assert len(ours) == len(theirs) >= at_least
    assert set(ours[0]) == set(theirs[0])  # the records carry the same fields
    for r, t in zip(ours, theirs):  # the same masks, in the same order, with the same numbers
        assert r["segmentation"] == t["segmentation"]
        assert r["bbox"] == t["bbox"] and r["area"] == t["area"]
        assert r["point_coords"] == t["point_coords"]
        assert r["predicted_iou"] == t["predicted_iou"]
        assert r["stability_score"] == t["stability_score"]
        assert [float(v) for v in r["crop_box"]] == [float(v) for v in t["crop_box"]]
    if crop_n_layers:
        assert len({tuple(r["crop_box"]) for r in ours}) > 1  # crops contributed masks
