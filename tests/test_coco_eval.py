"""COCO mask AP of box prompts through pycocotools' COCOeval."""

from __future__ import annotations

import torch

from sam_train.coco_eval import CocoMaskAP, is_coco_like


def _squares(k: int = 4, size: int = 32) -> torch.Tensor:
    masks = torch.zeros(k, size, size, dtype=torch.bool)
    for i in range(k):
        masks[i, 2 + 6 * i : 7 + 6 * i, 3 : 3 + 4 + 3 * i] = True
    return masks


def _update(
    ap: CocoMaskAP,
    gt: torch.Tensor,
    pred: torch.Tensor,
    scores: torch.Tensor,
    cats: tuple[int, ...] = (1, 2, 1, 2),
) -> None:
    k = gt.shape[0]
    ap.update(
        gt,
        pred,
        scores,
        torch.tensor(cats)[:k],
        torch.tensor([0, 0, 1, 1])[:k],
        torch.tensor([[32, 32]] * k),
    )


def test_perfect_masks_score_ap_1_and_wrong_ones_0() -> None:
    gt = _squares()
    ap = CocoMaskAP()
    _update(ap, gt, gt.clone(), torch.rand(4))
    assert ap.compute() == {"coco_mask_ap": 1.0, "coco_mask_ap50": 1.0}
    ap.reset()
    _update(ap, gt, gt.roll(16, dims=-1), torch.rand(4))  # moved off the objects
    assert ap.compute()["coco_mask_ap"] == 0.0
    ap.reset()
    assert ap.compute() == {}


def test_score_order_matters_and_ranks_are_gathered() -> None:
    gt = _squares()
    bad = gt.roll(16, dims=-1)
    pred = torch.stack([gt[0], bad[1], gt[2], bad[3]])
    good_first, bad_first = CocoMaskAP(), CocoMaskAP()
    one_class = (1, 1, 1, 1)  # the ranking by score decides precision along recall
    _update(good_first, gt, pred, torch.tensor([0.9, 0.1, 0.9, 0.1]), one_class)
    _update(bad_first, gt, pred, torch.tensor([0.1, 0.9, 0.1, 0.9]), one_class)
    assert good_first.compute()["coco_mask_ap50"] > bad_first.compute()["coco_mask_ap50"]
    # two "ranks", each with half of the images, gathered = one process with all of them
    rank0, rank1, whole = CocoMaskAP(), CocoMaskAP(), CocoMaskAP()
    _update(rank0, gt[:2], pred[:2], torch.tensor([0.9, 0.1]))
    rank1.update(
        gt[2:],
        pred[2:],
        torch.tensor([0.9, 0.1]),
        torch.tensor([1, 2]),
        torch.tensor([0, 0]),
        torch.tensor([[32, 32]] * 2),
    )
    _update(whole, gt, pred, torch.tensor([0.9, 0.1, 0.9, 0.1]))
    gathered = rank0.compute(gather=lambda mine: [mine, rank1._images])
    assert gathered == whole.compute()


def test_coco_like_means_every_mask_has_a_category() -> None:
    assert is_coco_like(torch.tensor([1, 3]))
    assert not is_coco_like(torch.tensor([1, -1])) and not is_coco_like(torch.tensor([]))
