"""Parameter groups, the lr rule and the schedule shape."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_mae

from sam_train.lit.optim import (
    OptimConfig,
    build_optimizer,
    derive_schedule,
    encoder_layer_id,
    lr_factor,
    param_groups,
)


def test_no_weight_decay_on_norms_biases_positions_and_tokens():
    model = tiny_mae()
    groups = param_groups(model, 0.05, no_decay_names=model.no_weight_decay())
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in by_id  # fixed sin-cos tables are not optimised
            continue
        exempt = p.ndim <= 1 or name in {"encoder.cls_token", "mask_token"}
        assert by_id[id(p)] == (0.0 if exempt else 0.05), name


def test_lr_scales_with_effective_batch_unless_given():
    d = derive_schedule(
        OptimConfig(base_lr=1.5e-4), effective_batch=4096, total_steps=100, steps_per_epoch=10
    )
    assert d.lr == pytest.approx(1.5e-4 * 16)
    d = derive_schedule(
        OptimConfig(lr=1e-3), effective_batch=4096, total_steps=100, steps_per_epoch=10
    )
    assert d.lr == 1e-3


def test_linear_warmup_then_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, warmup_epochs=1, min_lr=0.1)
    d = derive_schedule(cfg, 256, total_steps=110, steps_per_epoch=10)
    assert d.warmup_steps == 10
    assert lr_factor(0, d, cfg) == pytest.approx(0.1)
    assert lr_factor(9, d, cfg) == pytest.approx(1.0)
    assert lr_factor(60, d, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, d, cfg) == pytest.approx(0.1)


def test_step_schedule_decays_at_milestones():
    cfg = OptimConfig(lr=1.0, schedule="step", warmup_steps=0, milestones=[60000, 86666], gamma=0.1)
    d = derive_schedule(cfg, 256, total_steps=90000, steps_per_epoch=1000)
    assert [lr_factor(s, d, cfg) for s in (0, 59999, 60000, 86666)] == pytest.approx(
        [1, 1, 0.1, 0.01]
    )


def test_layer_decay_scales_lr_by_depth():
    model = tiny_mae()
    depth = model.encoder.depth
    groups = param_groups(
        model.encoder,
        0.05,
        layer_decay=0.5,
        num_layers=depth,
        layer_of=lambda n: encoder_layer_id(n, depth),
    )
    cfg = OptimConfig(lr=1.0)
    opt, sched = build_optimizer(groups, cfg, derive_schedule(cfg, 256, 10, 10))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["decay_layer0"] == pytest.approx(0.5 ** (depth + 1))  # patch embedding
    assert lrs["decay_layer1"] == pytest.approx(0.5**depth)  # first block
    assert lrs["no_decay_layer3"] == pytest.approx(1.0)  # final norm


def test_bad_optimiser_settings_are_refused():
    with pytest.raises(ValueError, match="optim.schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="layer_decay"):
        OptimConfig(layer_decay=1.5)
