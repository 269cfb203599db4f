"""Defaults that fit what the README says they are (a CPU run on the sample trains in minutes,
the paper's recipes one `experiment=` away), loaders sized to the machine, a warning for a
learning rate too small to do anything, and freezing that never freezes random tensors."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_mae, tiny_sam_arch, train_stage1_checkpoint
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from sam_train.data.machine import fit_pin_memory, fit_workers
from sam_train.lit.optim import (
    OptimConfig,
    build_optimizer,
    derive_schedule,
    encoder_layer_id,
    lr_warning,
    param_groups,
)
from sam_train.lit.sam_model import trainable_sam

TINY_SAM = tiny_sam_arch()


def composed(*overrides: str):
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def default_run_steps(cfg) -> tuple[int, int]:
    """(effective batch, optimiser steps) of a composed single-device run."""
    batch = cfg.data.batch_size
    per_epoch = -(-cfg.data.samples_per_epoch // batch)
    return batch, per_epoch * cfg.trainer.max_epochs


# ----------------------------------------------------------------------------- freezing
@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stage1") / "mae.ckpt"
    train_stage1_checkpoint(path, tiny_mae(embed_dim=32, num_heads=2, patch_size=16), steps=1)
    return path


def test_freezing_keeps_what_the_checkpoint_did_not_provide_trainable(stage1, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="sam_train.lit.sam_model"):
        sam = trainable_sam(init_from=str(stage1), freeze_encoder=True, **TINY_SAM)
    trainable = {n for n, p in sam.image_encoder.named_parameters() if p.requires_grad}
    # stage 1 has no neck and no relative-position tables: random here, so they must train
    assert {
        n for n, _ in sam.image_encoder.named_parameters() if n.startswith("neck.")
    } <= trainable
    assert {"blocks.0.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"} <= trainable
    # what stage 1 did provide is frozen
    assert "blocks.0.attn.qkv.weight" not in trainable
    assert "patch_embed.proj.weight" not in trainable
    assert all(p.requires_grad for p in sam.mask_decoder.parameters())
    assert "stay trainable" in caplog.text and "neck" in caplog.text


def test_an_encoder_without_relative_positions_is_stage_1s_vit_and_only_its_neck_trains(
    stage1,
) -> None:
    sam = trainable_sam(init_from=str(stage1), freeze_encoder=True, use_rel_pos=False, **TINY_SAM)
    assert not [n for n in sam.init_report.new if n.startswith("image_encoder.blocks.")]
    trainable = {n for n, p in sam.image_encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("neck.") for n in trainable)


def test_the_demo_trains_a_decoder_on_the_frozen_stage_1_encoder_at_an_lr_that_learns() -> None:
    demo = composed("stage=sam", "experiment=demo_sam")
    assert demo.model.freeze_encoder and not demo.model.use_rel_pos
    # lr 4e-3 left the decoder answering every prompt the same way; 1e-3 with a warm-up learns
    assert demo.optim.lr <= 1e-3 and demo.optim.warmup_steps >= 50
    batch, steps = default_run_steps(demo)
    assert steps >= 500  # the decoder starts to localise prompts after ~250 steps


def test_freezing_without_a_checkpoint_freezes_what_it_names_and_warns(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="sam_train.lit.sam_model"):
        sam = trainable_sam(freeze=["image_encoder", "prompt_encoder"], **TINY_SAM)
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())
    assert not any(p.requires_grad for p in sam.prompt_encoder.parameters())
    assert all(p.requires_grad for p in sam.mask_decoder.parameters())
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "image_encoder, prompt_encoder frozen at random init" in warning.getMessage()
    assert "no model.init_from" in warning.getMessage()


def test_freezing_with_a_checkpoint_keeps_its_new_tensors_trainable_unless_asked(
    stage1, caplog
) -> None:
    parts = ["image_encoder", "prompt_encoder"]
    with caplog.at_level(logging.INFO, logger="sam_train.lit.sam_model"):
        sam = trainable_sam(init_from=str(stage1), freeze=parts, **TINY_SAM)
    # stage 1 provides none of the prompt encoder: frozen as asked, at random init, named
    assert not any(p.requires_grad for p in sam.prompt_encoder.parameters())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "model.freeze: prompt_encoder frozen at random init (model.init_from provided none of it)"
    ]
    # the encoder's new neck trains by default, and is listed with the switch that freezes it
    assert all(p.requires_grad for p in sam.image_encoder.neck.parameters())
    assert not sam.image_encoder.blocks[0].attn.qkv.weight.requires_grad
    assert "neck" in caplog.text and "model.freeze_new=true" in caplog.text
    strict = trainable_sam(init_from=str(stage1), freeze=parts, freeze_new=True, **TINY_SAM)
    assert not any(p.requires_grad for p in strict.image_encoder.parameters())
    assert not any(p.requires_grad for p in strict.prompt_encoder.parameters())
    assert all(p.requires_grad for p in strict.mask_decoder.parameters())


def test_freeze_new_is_a_model_option_of_every_sam_size() -> None:
    cfg = composed("stage=sam", "model.freeze=[image_encoder]", "model.freeze_new=true")
    assert cfg.model.freeze_new is True and list(cfg.model.freeze) == ["image_encoder"]


# ----------------------------------------------------------------------------- lr
def test_a_learning_rate_too_small_to_train_is_reported() -> None:
    cfg = OptimConfig()  # base_lr 1.5e-4 per 256 images
    message = lr_warning(cfg, derive_schedule(cfg, 16, total_steps=160, steps_per_epoch=16))
    assert message is not None and "9.37e-06" in message and "optim.lr" in message
    big = derive_schedule(cfg, 4096, total_steps=100_000, steps_per_epoch=300)
    assert lr_warning(cfg, big) is None


def test_the_lr_warning_advises_only_what_would_change_something() -> None:
    short = OptimConfig(lr=1e-3)  # already the typical lr: a 2-step run needs more steps
    message = lr_warning(short, derive_schedule(short, 2, total_steps=2, steps_per_epoch=2))
    assert message is not None and "more steps" in message
    assert "optim.lr=" not in message.split("give", 1)[1] and "batch" not in message
    small = OptimConfig(lr=1e-5)
    message = lr_warning(small, derive_schedule(small, 2, total_steps=100, steps_per_epoch=10))
    assert "a larger lr (e.g. optim.lr=0.001)" in message and "batch" not in message


def test_encoder_lr_scale_slows_only_the_encoder_blocks() -> None:
    model = tiny_mae()
    depth = model.encoder.depth
    groups = param_groups(
        model.encoder,
        0.05,
        num_layers=depth,
        layer_of=lambda n: encoder_layer_id(n, depth),
        encoder_lr_scale=0.1,
    )
    cfg = OptimConfig(lr=1.0, encoder_lr_scale=0.1)
    opt, _ = build_optimizer(groups, cfg, derive_schedule(cfg, 256, 10, 10))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["decay_layer1"] == pytest.approx(0.1)  # a block
    assert lrs[f"no_decay_layer{depth + 1}"] == pytest.approx(1.0)  # the final norm


# ----------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("stage", ["mae", "sam"])
def test_the_default_runs_have_an_lr_that_trains(stage: str) -> None:
    cfg = composed(f"stage={stage}")
    batch, steps = default_run_steps(cfg)
    optim = instantiate(cfg.optim)
    assert lr_warning(optim, derive_schedule(optim, batch, steps, steps / 10)) is None
    assert 100 <= steps <= 400  # minutes on a CPU, enough to see it learn


def test_stage_sam_defaults_are_cpu_sized_and_the_paper_is_one_experiment_away() -> None:
    light = composed("stage=sam")
    module, rounds = light.stage.module, light.stage.module.interactive
    assert light.model.image_size == 256 and light.model.prompt_embed_dim == 128
    assert (
        module.max_masks_per_image * (1 + rounds.num_click_rounds + rounds.num_mask_only_rounds)
        <= 40
    )
    assert rounds.num_click_rounds >= 2  # trained corrections, so more clicks help
    paper = composed("stage=sam", "experiment=sam_vit_b_sa1b")
    module, rounds = paper.stage.module, paper.stage.module.interactive
    assert module.max_masks_per_image == 64
    assert 1 + rounds.num_click_rounds + rounds.num_mask_only_rounds == 11
    assert rounds.loss_weights == {"loss_focal": 20.0} and rounds.checkpoint_rounds
    assert paper.optim.lr is None and paper.optim.base_lr == 8e-4  # 8e-4 at batch 256
    assert paper.optim.schedule == "step"
    mae_paper = composed("stage=mae", "experiment=mae_vit_base_paper", "data.root=/x")
    assert mae_paper.optim.lr is None and mae_paper.trainer.max_epochs == 800


# ----------------------------------------------------------------------------- loaders
def test_loader_workers_and_pinned_memory_follow_the_machine() -> None:
    assert fit_workers(8, cpus=2) == 1
    assert fit_workers(8, cpus=32) == 8
    assert fit_workers(0, cpus=32) == 0
    assert fit_pin_memory(True) == torch.cuda.is_available()
    assert fit_pin_memory(False) is False
    from sam_train.data.shard_datamodules import ShardSamDataModule

    dm = ShardSamDataModule("shards", img_size=64, num_workers=512, pin_memory=True)
    assert dm.num_workers < 512 and dm.pin_memory == torch.cuda.is_available()
