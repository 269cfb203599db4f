"""Prompt simulation and the interactive loop."""

from __future__ import annotations

import torch
from conftest import tiny_sam

from sam_train.data.batch import SamBatch
from sam_train.training import (
    InteractiveConfig,
    PromptTargets,
    first_prompts,
    interactive_loss,
    mask_only_rounds,
    noisy_boxes,
    sample_error_points,
    sample_points_in,
    select_masks,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_error_points_land_in_errors_with_the_right_label() -> None:
    gt = torch.zeros(200, 16, 16, dtype=torch.bool)
    gt[:, 4:12, 4:12] = True
    pred = torch.zeros_like(gt)
    pred[:, 4:12, 8:16] = True  # misses columns 4..7 (FN), adds columns 12..15 (FP)
    points, labels = sample_error_points(pred, gt, generator=_gen())
    x, y = points.long().unbind(1)
    fn = gt & ~pred
    fp = pred & ~gt
    idx = torch.arange(200)
    is_fn, is_fp = fn[idx, y, x], fp[idx, y, x]
    assert (is_fn | is_fp).all()
    assert (labels[is_fn] == 1).all() and (labels[is_fp] == 0).all()
    # uniform over the union: both kinds appear, in roughly equal numbers (32 px each)
    assert 60 < is_fn.sum() < 140


def test_error_points_respect_the_image_region_and_perfect_masks() -> None:
    gt = torch.zeros(50, 8, 8, dtype=torch.bool)
    gt[:, :3, :3] = True
    pred = gt.clone()
    pred[:, 6:, 6:] = True  # a false positive in the padding only
    region = torch.zeros_like(gt)
    region[:, :5, :5] = True
    points, labels = sample_error_points(pred, gt, region, generator=_gen(1))
    x, y = points.long().unbind(1)
    # no error inside the image: a background click inside the image, outside the object
    assert (labels == 0).all() and (x < 5).all() and (y < 5).all()
    assert (~gt[torch.arange(50), y, x]).all()


def test_points_in_masks_are_uniform_and_inside() -> None:
    masks = torch.zeros(3000, 10, 10, dtype=torch.bool)
    pixels = torch.tensor([[3.0, 2.0], [8.0, 7.0], [1.0, 7.0]])  # (x, y); two share row 7
    for x, y in pixels.long().tolist():
        masks[:, y, x] = True
    masks[-1] = False
    points, found = sample_points_in(masks, _gen())
    assert found[:-1].all() and not found[-1] and points[-1].tolist() == [0.0, 0.0]
    hits = (points[:-1, None] == pixels[None]).all(-1)  # [N, 3]
    assert (hits.sum(1) == 1).all()
    assert ((hits.sum(0) - 1000).abs() < 100).all()  # each pixel about a third of the time


def test_noisy_boxes_scale_clamp_and_order() -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 50.0]]).repeat(4000, 1)
    out = noisy_boxes(boxes, generator=_gen(), size=1000)
    std = (out - boxes).std(0)
    torch.testing.assert_close(std, torch.tensor([2.0, 4.0, 2.0, 4.0]), atol=0.3, rtol=0)
    big = noisy_boxes(
        torch.tensor([[0.0, 0.0, 900.0, 900.0]]).repeat(4000, 1), generator=_gen(), size=1000
    )
    assert big.max() <= 999 and big.min() >= 0  # clamped (noise capped at 20 px, not 90)
    assert (big[:, 2] - 900).std() < 25
    assert (out[:, :2] <= out[:, 2:]).all()
    hw = torch.tensor([[20, 25]]).repeat(4000, 1)
    inside = noisy_boxes(boxes, image_hw=hw, generator=_gen())
    assert (inside[:, 0::2] <= 24).all() and (inside[:, 1::2] <= 19).all()


def _targets(k: int = 6, size: int = 32) -> PromptTargets:
    masks = torch.zeros(k, size, size, dtype=torch.bool)
    for i in range(k):
        j = i % 6
        masks[i, 2 + j : 12 + j, 4 + 2 * j : 14 + 2 * j] = True
    ys, xs = torch.arange(k) % 6 + 2, 2 * (torch.arange(k) % 6) + 4
    boxes = torch.stack([xs, ys, xs + 9, ys + 9], 1).float()
    return PromptTargets(masks, boxes, torch.zeros(k, dtype=torch.long))


def test_first_prompts_mix_points_and_boxes() -> None:
    t = _targets(200)
    coords, labels, kinds = first_prompts(t, generator=_gen())
    assert coords.shape == (200, 2, 2) and labels.shape == (200, 2)
    assert 60 < (kinds == 1).sum() < 140
    pt = kinds == 0
    assert (labels[pt] == torch.tensor([1, -1])).all() and (
        labels[~pt] == torch.tensor([2, 3])
    ).all()
    x, y = coords[pt, 0].long().unbind(1)
    assert t.masks[pt][torch.arange(int(pt.sum())), y, x].all()  # the point is on the object
    _, _, only_boxes = first_prompts(t, point_prob=0.0, box_prob=1.0, generator=_gen())
    assert (only_boxes == 1).all()


def test_mask_only_rounds_one_random_one_last() -> None:
    cfg = InteractiveConfig()
    assert cfg.num_rounds == 11
    seen = set()
    for seed in range(30):
        rounds = mask_only_rounds(cfg, _gen(seed))
        assert len(rounds) == 2 and 10 in rounds
        (other,) = rounds - {10}
        assert 1 <= other <= 9
        seen.add(other)
    assert len(seen) > 4


def test_select_masks_drops_invalid_huge_and_tiny() -> None:
    s = 32
    masks = torch.zeros(2, 4, s, s, dtype=torch.bool)
    masks[0, 0, :10, :10] = True  # ok
    masks[0, 1, :, :] = True  # covers everything: dropped
    masks[0, 2, 0, 0] = True  # tiny: dropped
    masks[0, 3, 5:15, 5:15] = True  # ok but padding slot
    masks[1, 0, 20:30, 20:30] = True  # ok
    batch = SamBatch(
        images=torch.zeros(2, 3, s, s),
        masks=masks,
        mask_valid=torch.tensor([[True, True, True, False], [True, False, False, False]]),
        boxes=torch.zeros(2, 4, 4),
        category_ids=torch.full((2, 4), -1),
    )
    t = select_masks(batch, generator=_gen())
    assert t.image_index.tolist() == [0, 1] and t.masks.shape == (2, s, s)
    masks[1, 1:3, :8, :8] = True
    batch.mask_valid[1] = torch.tensor([True, True, True, False])
    capped = select_masks(batch, max_masks_per_image=2, generator=_gen())
    assert capped.image_index.tolist() == [0, 1, 1]


def test_interactive_loop_runs_and_backpropagates() -> None:
    sam = tiny_sam(image_size=32).train()
    images = torch.randn(2, 3, 32, 32)
    t = _targets(5)
    t.image_index = torch.tensor([0, 0, 1, 1, 1])
    t.image_hw = torch.tensor([[32, 32]] * 5)
    emb = sam.embed_images(images)
    res = interactive_loss(sam, emb, t, InteractiveConfig(num_click_rounds=3), _gen())
    assert set(res.losses) == {"loss_focal", "loss_dice", "loss_iou", "loss"}
    assert res.round_iou.shape == (6,) and res.final_logits.shape == (5, 1, 8, 8)
    res.losses["loss"].backward()
    assert sam.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert sam.prompt_encoder.mask_downscaling[0].weight.grad.abs().sum() > 0


def test_interactive_loop_clicks_foreground_where_nothing_was_predicted() -> None:
    """A decoder whose logits are all negative misses every object: the loop's first
    corrective click must be a foreground click (label 1) on the object."""
    sam = tiny_sam(image_size=32).train()
    with torch.no_grad():  # upscaled map GELU(1) > 0 everywhere, every mask filter -1
        up2 = sam.mask_decoder.output_upscaling[3]
        up2.weight.zero_()
        up2.bias.fill_(1.0)
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.fill_(-1.0)
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    decode = sam.decode

    def recording_decode(*args, **kwargs):
        logits, iou = decode(*args, **kwargs)
        coords, labels = kwargs["points"]
        calls.append((coords.detach(), labels.detach(), logits.detach()))
        return logits, iou

    sam.decode = recording_decode
    t = _targets(6)
    t.image_hw = torch.tensor([[32, 32]] * 6)
    cfg = InteractiveConfig(num_click_rounds=1, num_mask_only_rounds=0, checkpoint_rounds=False)
    interactive_loss(sam, sam.embed_images(torch.randn(1, 3, 32, 32)), t, cfg, _gen())
    assert len(calls) == 2  # the first prompt, then one click round
    assert (calls[0][2] < 0).all()
    coords, labels, _ = calls[1]
    x, y = coords[:, -1].long().unbind(1)  # the click added in round 1
    assert (labels[:, -1] == 1).all()
    assert t.masks[torch.arange(6), y, x].all()


def test_interactive_loop_with_no_masks_is_zero_and_finite() -> None:
    sam = tiny_sam(image_size=32).train()
    emb = sam.embed_images(torch.randn(1, 3, 32, 32))
    empty = PromptTargets(
        torch.zeros(0, 32, 32, dtype=torch.bool),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
    )
    res = interactive_loss(sam, emb, empty)
    assert all(v.item() == 0.0 for v in res.losses.values())
    res.losses["loss"].backward()
    grads = [p.grad for p in sam.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_interactive_loop_under_bf16_autocast() -> None:
    sam = tiny_sam(image_size=32).train()
    t = _targets(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = sam.embed_images(torch.randn(1, 3, 32, 32))
        res = interactive_loss(sam, emb, t, InteractiveConfig(num_click_rounds=2), _gen())
    assert res.losses["loss"].dtype == torch.float32 and torch.isfinite(res.losses["loss"])
    res.losses["loss"].backward()


def _loop_grads(checkpoint_rounds: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sam = tiny_sam(image_size=32).train()
    t = _targets(5)
    t.image_index = torch.tensor([0, 0, 1, 1, 1])
    t.image_hw = torch.tensor([[32, 32]] * 5)
    emb = sam.embed_images(torch.randn(2, 3, 32, 32, generator=_gen(1)))
    cfg = InteractiveConfig(num_click_rounds=3, checkpoint_rounds=checkpoint_rounds)
    loss = interactive_loss(sam, emb, t, cfg, _gen()).losses["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in sam.named_parameters()}


def test_checkpointed_rounds_give_the_same_loss_and_gradients() -> None:
    loss, grads = _loop_grads(checkpoint_rounds=False)
    loss_ckpt, grads_ckpt = _loop_grads(checkpoint_rounds=True)
    assert torch.allclose(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for name, g in grads.items():  # encoder included: it sees every round's gradient
        assert torch.allclose(g, grads_ckpt[name], atol=1e-6, rtol=1e-5), name
    assert grads["image_encoder.patch_embed.proj.weight"].abs().sum() > 0


def test_checkpointed_rounds_hold_one_round_of_decoder_activations() -> None:
    """Memory held between the loop and its backward: all rounds' graphs vs their inputs only."""
    sam = tiny_sam(image_size=64).train()
    t = _targets(8, size=64)
    emb = sam.embed_images(torch.randn(1, 3, 64, 64)).detach().requires_grad_(True)

    def held(checkpoint_rounds: bool) -> int:
        cfg = InteractiveConfig(num_click_rounds=6, checkpoint_rounds=checkpoint_rounds)
        saved: list[int] = []

        def pack(x: torch.Tensor) -> torch.Tensor:
            saved.append(x.numel() * x.element_size())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = interactive_loss(sam, emb, t, cfg, _gen()).losses["loss"]
        loss.backward()
        return sum(saved)

    plain, checkpointed = held(False), held(True)
    assert checkpointed < plain / 4, (checkpointed, plain)
