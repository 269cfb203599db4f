"""Continued MAE pretraining: `model.init_from` for stage 1 from official MAE, timm, and the
image encoder of a SAM checkpoint; what carries over, what is ignored, what is new."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    MAE_TINY,
    compose_train,
    randomise,
    run_output,
    tiny_mae,
    tiny_sam,
    train_in_process,
)

from sam_train.weights.checkpoints import WeightsError
from sam_train.weights.init import init_mae_from
from sam_train.weights.keymaps import mae_to_official, sam_state_to_official


def blocks_equal(mae, source: dict, prefix: str = "") -> bool:
    ours = mae.encoder.state_dict()
    keys = [k for k in ours if k.startswith("blocks.")]
    return bool(keys) and all(torch.equal(ours[k], source[prefix + k]) for k in keys)


def test_from_official_mae_loads_encoder_and_decoder_keeping_fixed_positions(tmp_path):
    source = randomise(tiny_mae())
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": mae_to_official(source.state_dict())}, path)
    mae = tiny_mae()
    report = init_mae_from(mae, path)
    assert blocks_equal(mae, source.encoder.state_dict())
    assert torch.equal(mae.decoder_pred.weight, source.decoder_pred.weight)
    assert torch.equal(mae.mask_token, source.mask_token)
    assert {"encoder.pos_embed", "decoder_pos_embed"} <= set(report.ignored)
    assert sorted(report.new) == ["decoder_pos_embed", "encoder.pos_embed"]  # fixed sin-cos


def test_from_timm_vit_loads_the_encoder_and_the_decoder_is_new(tmp_path):
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10
    )
    path = tmp_path / "vit.pth"
    torch.save(randomise(vit).state_dict(), path)
    mae = tiny_mae()
    report = init_mae_from(mae, path)
    assert blocks_equal(mae, vit.state_dict())
    assert torch.equal(mae.encoder.cls_token, vit.cls_token)
    assert "decoder_pred.weight" in report.new and "head.weight" not in report.loaded


def test_from_a_sam_checkpoint_takes_the_plain_vit_blocks_and_reports_the_rest(tmp_path):
    sam = randomise(tiny_sam(encoder_embed_dim=64, encoder_num_heads=4, patch_size=8))
    path = tmp_path / "sam_official.pth"
    official = sam_state_to_official(sam.state_dict())
    torch.save(official, path)
    mae = tiny_mae()
    report = init_mae_from(mae, path)
    assert blocks_equal(mae, sam.image_encoder.state_dict())  # mlp.lin1/2 mapped to fc1/fc2
    assert "image_encoder.blocks.0.mlp.lin1.weight" in official
    assert "encoder.blocks.0.attn.rel_pos_h" in report.ignored
    assert "encoder.neck.0.weight" in report.ignored and "encoder.pos_embed" in report.ignored
    assert {"encoder.cls_token", "encoder.norm.weight"} <= set(report.new)


def test_an_encoder_of_another_width_is_refused_with_the_size_it_fits(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": mae_to_official(tiny_mae(embed_dim=128).state_dict())}, path)
    with pytest.raises(WeightsError, match="does not fit this model"):
        init_mae_from(tiny_mae(), path)


@pytest.mark.slow
def test_stage1_continues_pretraining_from_a_sam_image_encoder(tmp_path):
    sam = randomise(tiny_sam(encoder_embed_dim=32, encoder_num_heads=2, patch_size=8))
    path = tmp_path / "sam_official.pth"
    torch.save(sam_state_to_official(sam.state_dict()), path)
    overrides = [
        "stage=mae",
        *MAE_TINY,
        "data.samples_per_epoch=8",
        "trainer.max_epochs=1",
        f"model.init_from={path}",
    ]
    with run_output() as out:
        train_in_process(overrides, tmp_path / "run")
    log = out.getvalue()
    assert "init from" in log and "(sam_official)" in log
    assert "ignored (encoder.pos_embed" in log or "rel_pos" in log
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_adapters_are_refused_for_stage_1_with_the_key_to_drop():
    from sam_train.config_checks import ConfigError, check_config

    cfg = compose_train(["stage=mae", "peft=lora"], ".")
    with pytest.raises(ConfigError, match="peft=lora with stage=mae"):
        check_config(cfg)
