"""Stage-1 exports: timm ViT, official MAE layout, dtype, and bad files."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import call_main, tiny_mae, train_stage1_checkpoint

from sam_train.cli import export as export_cli
from sam_train.weights.checkpoints import WeightsError, read_weights
from sam_train.weights.export import export
from sam_train.weights.keymaps import mae_from_official


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    """A real Lightning checkpoint of a tiny MAE after two optimiser steps."""
    torch.manual_seed(0)
    mae = tiny_mae()
    path = tmp_path_factory.mktemp("ckpt") / "stage1.ckpt"
    train_stage1_checkpoint(path, mae, steps=2, run_config={"model": {"embed_dim": 64}})
    return path, mae


def test_timm_export_loads_strictly_and_matches_features(stage1_ckpt, tmp_path):
    ckpt, model = stage1_ckpt
    out = export(ckpt, "timm", tmp_path / "vit.safetensors")
    weights = read_weights(out)
    assert weights.metadata["format"] == "timm" and weights.metadata["source_sha256"]
    vit = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0
    )
    vit.load_state_dict(weights.state_dict, strict=True)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ours = model.encoder(x)
        theirs = vit.eval().forward_features(x)
    assert (ours - theirs).abs().max() < 1e-4


def test_official_mae_layout_round_trips(stage1_ckpt, tmp_path):
    ckpt, model = stage1_ckpt
    out = export(ckpt, "mae", tmp_path / "mae.pth")
    raw = torch.load(out, weights_only=True)
    assert "blocks.0.attn.qkv.weight" in raw["model"] and "decoder_pred.weight" in raw["model"]
    loaded = read_weights(out)
    assert loaded.layout == "mae_official"
    back = mae_from_official(loaded.state_dict)
    ref = model.state_dict()
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)


def test_fp16_export_is_within_tolerance(stage1_ckpt, tmp_path):
    ckpt, model = stage1_ckpt
    out = export(ckpt, "encoder", tmp_path / "enc16.safetensors", dtype="fp16")
    sd = read_weights(out).state_dict
    ref = model.encoder.state_dict()
    assert sd["blocks.0.attn.qkv.weight"].dtype == torch.float16
    assert max((sd[k].float() - ref[k]).abs().max().item() for k in ref) < 1e-2


def test_bad_files_give_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.ckpt.*empty"):
        read_weights(empty)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt.pth.*is a text file, not a checkpoint"):
        read_weights(corrupt)
    corrupt.write_bytes(bytes(range(256)))
    with pytest.raises(WeightsError, match="corrupt.pth.*is not a PyTorch checkpoint"):
        read_weights(corrupt)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match="not a ViT, MAE or SAM"):
        read_weights(other)
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights(tmp_path / "missing.ckpt")


def test_cli_exports_and_reports_errors(stage1_ckpt, tmp_path, capfd):
    ckpt, _ = stage1_ckpt
    out = tmp_path / "enc.safetensors"
    res = call_main(export_cli.main, [ckpt, "--format", "encoder", "--out", out], capfd)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "wrote encoder weights" in res.stdout
    res = call_main(export_cli.main, [tmp_path / "nope.ckpt", "--format", "timm"], capfd)
    assert res.returncode == 2 and "nope.ckpt" in res.stderr and "Traceback" not in res.stderr
