"""SAM losses against hand-computed values."""

from __future__ import annotations

import math

import torch

from sam_train.losses import (
    LOSS_WEIGHTS,
    dice_loss,
    iou_mse_loss,
    masks_to_logit_size,
    sam_loss,
    sigmoid_focal_loss,
)


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([[[0.0, 2.0]]])  # one mask, 1 x 2 pixels
    targets = torch.tensor([[[1.0, 0.0]]])
    p1, p2 = 0.5, 1 / (1 + math.exp(-2.0))
    # pixel 1: positive, p_t = 0.5; pixel 2: negative, p_t = 1 - p2
    l1 = 0.25 * (-math.log(p1)) * (1 - p1) ** 2
    l2 = 0.75 * (-math.log(1 - p2)) * p2**2
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), torch.tensor([(l1 + l2) / 2]))


def test_dice_loss_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0], [100.0, -100.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    prob_sum, inter, t_sum = 0.5 + 0.5 + 1.0, 0.5 + 1.0, 2.0
    expected = 1 - (2 * inter + 1) / (prob_sum + t_sum + 1)
    torch.testing.assert_close(dice_loss(logits, targets), torch.tensor([expected]))
    perfect = dice_loss(torch.tensor([[[50.0, -50.0]]]), torch.tensor([[[1.0, 0.0]]]))
    assert perfect.item() < 1e-6


def test_iou_loss_uses_the_thresholded_mask() -> None:
    logits = torch.tensor([[[1.0, 1.0, -1.0, -1.0]]])  # predicts pixels 0, 1
    targets = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])  # object is pixels 0, 2 -> IoU 1/3
    loss = iou_mse_loss(torch.tensor([0.5]), logits, targets)
    torch.testing.assert_close(loss, torch.tensor([(0.5 - 1 / 3) ** 2]))


def test_loss_weights_are_the_papers_20_1_1() -> None:
    """focal : dice : iou = 20 : 1 : 1 (Kirillov et al., 2023), written out, not read back."""
    assert LOSS_WEIGHTS == {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0}
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])  # one mask of 1 x 4 pixels
    logits = torch.tensor([[[[2.0, -1.0, 1.0, -3.0]]]])  # [1, 1, 1, 4]: one FN, one FP
    out = sam_loss(logits, torch.tensor([[0.9]]), target)
    focal, dice, iou = out["loss_focal"], out["loss_dice"], out["loss_iou"]
    assert min(focal, dice, iou) > 0.01  # every term counts, so a changed weight shows
    torch.testing.assert_close(out["loss"], 20 * focal + dice + iou)
    torch.testing.assert_close(iou, torch.tensor((0.9 - 1 / 3) ** 2))  # predicts pixels 0, 2


def test_multimask_choice_weighs_focal_20_to_dice_1() -> None:
    """Outputs C, B, A: C predicts nothing, B is sure with one false positive, A unsure but
    right everywhere. Focal prefers A, dice prefers B (so does focal + dice); only SAM's
    20 : 1 trains A."""
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    unsure = torch.where(target[0] > 0, 1.0, -1.0)
    sure = torch.where(target[0] > 0, 10.0, -10.0)
    sure[3, 3] = 2.0  # the false positive
    logits = torch.stack([torch.zeros(4, 4), sure, unsure])[None]  # [1, 3, 4, 4]: C, B, A
    logits.requires_grad_(True)
    per_output = target[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, per_output).detach()[0]  # [3]
    dice = dice_loss(logits, per_output).detach()[0]  # [3]
    assert focal.argmin() == 2 and dice.argmin() == 1 and (focal + dice).argmin() == 1
    assert (20 * focal + dice).argmin() == 2
    out = sam_loss(logits, torch.zeros(1, 3), target)
    torch.testing.assert_close(out["loss_focal"], focal[2])
    torch.testing.assert_close(out["loss_dice"], dice[2])
    out["loss"].backward()
    trained = logits.grad[0].flatten(1).abs().sum(1) > 0  # [3]
    assert trained.tolist() == [False, False, True]


def test_multimask_loss_goes_to_the_best_output_only() -> None:
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    good = torch.where(target[0] > 0, 8.0, -8.0)
    logits = torch.stack([-good, good, torch.zeros(4, 4)])[None]  # [1, 3, 4, 4], output 1 is right
    iou_pred = torch.tensor([[0.2, 0.9, 0.4]], requires_grad=True)
    logits.requires_grad_(True)
    out = sam_loss(logits, iou_pred, target)
    torch.testing.assert_close(out["loss_focal"], sigmoid_focal_loss(logits[:, 1], target)[0])
    torch.testing.assert_close(out["loss_dice"], dice_loss(logits[:, 1], target)[0])
    # IoU loss on all outputs: real IoUs are 0, 1, 0 (all-zero logits predict nothing)
    expected_iou = ((0.2 - 0) ** 2 + (0.9 - 1) ** 2 + (0.4 - 0) ** 2) / 3
    torch.testing.assert_close(out["loss_iou"], torch.tensor(expected_iou))
    w = LOSS_WEIGHTS
    torch.testing.assert_close(
        out["loss"],
        w["loss_focal"] * out["loss_focal"] + w["loss_dice"] * out["loss_dice"] + out["loss_iou"],
    )
    out["loss"].backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    assert logits.grad[0, 1].abs().sum() > 0
    assert (iou_pred.grad != 0).all()


def test_valid_outputs_restrict_the_choice() -> None:
    target = torch.ones(2, 2, 2)
    logits = torch.tensor([-5.0, 5.0, -5.0, -5.0]).view(1, 4, 1, 1).expand(2, 4, 2, 2).clone()
    iou_pred = torch.zeros(2, 4)
    valid = torch.tensor([[True, False, False, False], [False, True, True, True]])
    out = sam_loss(logits, iou_pred, target, valid)
    expected = (
        sigmoid_focal_loss(logits[0, 0], target[0]) + sigmoid_focal_loss(logits[1, 1], target[1])
    ) / 2
    torch.testing.assert_close(out["loss_focal"], expected)
    # IoU loss: prompt 0 on its single output (real IoU 0), prompt 1 on 3 outputs (1, 0, 0)
    torch.testing.assert_close(out["loss_iou"], torch.tensor((0.0 + 1 / 3 * 1.0) / 2))


def test_no_masks_gives_zero_not_nan() -> None:
    logits = torch.zeros(0, 3, 8, 8, requires_grad=True)
    out = sam_loss(logits, torch.zeros(0, 3), torch.zeros(0, 8, 8))
    for value in out.values():
        assert value.item() == 0.0
    out["loss"].backward()


def test_targets_are_area_averaged_to_the_logit_size() -> None:
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :2] = True
    low = masks_to_logit_size(masks, (2, 2))
    torch.testing.assert_close(low, torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]))
