"""Segmentation metrics: IoU, centre clicks, corrective clicks, NoC, the prompt evaluation."""

from __future__ import annotations

import torch

from sam_train.losses import masks_to_logit_size
from sam_train.metrics import (
    PromptMetrics,
    center_points,
    evaluate_prompts,
    mask_iou,
    next_clicks,
    number_of_clicks,
)


def test_mask_iou() -> None:
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b[0, :, :2] = True  # overlap 4, union 12
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([4 / 12, 1.0]))  # both empty -> 1


def test_center_point_is_farthest_from_the_boundary() -> None:
    m = torch.zeros(2, 21, 21, dtype=torch.bool)
    m[0, 5:16, 3:14] = True  # 11 x 11 square centred at (8, 10)
    m[1, :, :4] = True  # an L: thin bar plus a thick block
    m[1, 10:21, :12] = True
    pts = center_points(m)
    assert pts[0].tolist() == [8.0, 10.0]
    x, y = pts[1].long().tolist()
    assert m[1, y, x] and y >= 14  # inside the thick block, not on the thin bar


def test_next_click_goes_to_the_larger_error() -> None:
    gt = torch.zeros(2, 20, 20, dtype=torch.bool)
    gt[:, 2:18, 2:18] = True
    pred = gt.clone()
    pred[0, 2:18, 2:8] = False  # big false negative strip (6 wide)
    pred[0, 0, :] = True  # thin false positive line
    gt[1] = False
    gt[1, 2:14, 2:14] = True
    pred[1] = gt[1]
    pred[1, 2:14, 2] = False  # 1-wide false negative
    pred[1, 4:12, 14:19] = True  # 5-wide false positive block -> larger
    pts, labels = next_clicks(pred, gt)
    assert labels.tolist() == [1, 0]
    x, y = pts[0].long().tolist()
    assert 3 <= x <= 6 and 4 <= y <= 15  # distance 3 from every side of the 6-wide strip
    x, y = pts[1].long().tolist()
    assert 15 <= x <= 17 and 5 <= y <= 10


def test_number_of_clicks() -> None:
    ious = torch.tensor([[0.5, 0.86, 0.95], [0.9, 0.9, 0.9], [0.1, 0.2, 0.3]])
    assert number_of_clicks(ious, 0.85).tolist() == [2.0, 1.0, 3.0]
    assert number_of_clicks(ious, 0.9).tolist() == [3.0, 1.0, 3.0]


class _Oracle:
    """A fake SAM whose single-mask output is the ground truth once a foreground click is in."""

    mask_threshold = 0.0

    def __init__(self, gt: torch.Tensor) -> None:
        self.low = masks_to_logit_size(gt, (8, 8))

    def decode(
        self,
        emb,
        points=None,
        boxes=None,
        mask_inputs=None,
        multimask_output=True,
        image_index=None,
    ):
        k = self.low.shape[0]
        good = torch.where(self.low > 0.5, 10.0, -10.0)[:, None]  # [K, 1, 8, 8]
        if multimask_output:
            return torch.cat([-good, good, -good], 1), torch.tensor([[0.1, 0.9, 0.2]]).expand(k, 3)
        return good, torch.ones(k, 1)


def test_evaluate_prompts_with_a_perfect_model() -> None:
    gt = torch.zeros(3, 32, 32, dtype=torch.bool)
    gt[0, 4:20, 4:20] = True
    gt[1, 8:28, 12:24] = True
    gt[2, 0:16, 16:32] = True
    boxes = torch.tensor([[4, 4, 19, 19], [12, 8, 23, 27], [16, 0, 31, 15]]).float()
    out = evaluate_prompts(
        _Oracle(gt),
        torch.zeros(1, 8, 2, 2),
        gt,
        torch.zeros(3, dtype=torch.long),
        boxes=boxes,
        max_clicks=3,
    )
    assert out["iou_clicks"].shape == (3, 3)
    # bilinear upscaling of the 8 x 8 logits rounds each square corner off by one pixel
    for key in ("iou_point_oracle", "iou_point_confident", "iou_box"):
        assert (out[key] > 0.98).all(), key
    metrics = PromptMetrics()
    metrics.update(out)
    metrics.update(out)
    summary = metrics.compute()
    assert summary["miou_point_oracle"] > 0.98 and summary["noc90"] == 1.0
    assert set(summary) >= {"miou_box", "miou_click_1", "miou_click_3", "noc85", "noc90"}
