"""Stage 2 end to end: init from stage 1, `sam-train stage=sam`, export to the official SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    SAM_TINY,
    run_output,
    tiny_mae,
    tiny_sam,
    train_in_process,
    train_stage1_checkpoint,
)
from safetensors.torch import load_file

from sam_train.predictor import SamPredictor
from sam_train.weights.checkpoints import WeightsError
from sam_train.weights.export import export
from sam_train.weights.init import init_sam_from
from sam_train.weights.official import build_official_sam
from sam_train.weights.safetensors_io import save_weights
from sam_train.weights.sam_loading import load_sam


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    """A real stage-1 Lightning checkpoint: width 32, depth 2, 32 px images, 16 px patches."""
    torch.manual_seed(0)
    mae = tiny_mae(embed_dim=32, num_heads=2, patch_size=16)
    path = tmp_path_factory.mktemp("stage1") / "mae.ckpt"
    train_stage1_checkpoint(path, mae, steps=1)
    return path, mae


def test_init_from_stage1_loads_every_encoder_block_and_resizes_positions(stage1_ckpt):
    path, mae = stage1_ckpt
    sam = tiny_sam()
    report = init_sam_from(sam, path)
    enc, src = sam.image_encoder.state_dict(), mae.encoder.state_dict()
    block_keys = [k for k in src if k.startswith("blocks.")]
    assert block_keys and all(torch.equal(enc[k], src[k]) for k in block_keys)
    assert torch.equal(enc["patch_embed.proj.weight"], src["patch_embed.proj.weight"])
    assert "image_encoder.pos_embed" in report.resized  # 2x2 MAE grid -> 4x4 SAM grid
    assert enc["pos_embed"].shape == (1, 16, 32)
    assert "image_encoder.norm.weight" in report.ignored  # MAE's final norm has no SAM twin
    assert any(k.endswith("rel_pos_h") for k in report.new)
    assert any(k.startswith("mask_decoder.") for k in report.new)


def test_wrong_width_or_depth_is_refused(stage1_ckpt):
    path, _ = stage1_ckpt
    with pytest.raises(WeightsError, match="does not fit this model"):
        init_sam_from(tiny_sam(encoder_embed_dim=64), path)
    with pytest.raises(WeightsError, match="depth 2, the model 3"):
        init_sam_from(tiny_sam(encoder_depth=3, encoder_global_attn_indexes=(2,)), path)


@pytest.mark.slow
def test_stage2_trains_from_stage1_and_exports(stage1_ckpt, tmp_path):
    path, _ = stage1_ckpt
    run = tmp_path / "run"
    overrides = [
        "stage=sam",
        *SAM_TINY,
        f"model.init_from={path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "validate_before_training=true",
    ]
    with run_output() as out:
        train_in_process(overrides, run)
    assert "init from" in out.getvalue() and "tensors loaded" in out.getvalue()
    assert "before training ->" in out.getvalue()
    for rel in [
        "checkpoints/last.ckpt",
        "export/sam.safetensors",
        "export/encoder.safetensors",
        "masks/final.png",
        "masks/before_training.png",  # the validation before training, named for what it is
        "masks/README.txt",  # how to read the pictures
        "masks/click_curve.png",
    ]:
        assert (run / rel).is_file(), rel
    metrics = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in [
        "train/loss_focal",
        "train/loss_dice",
        "train/loss_iou",
        "val/miou_point_oracle",
        "val/miou_box",
        "val/noc85",
    ]:
        assert name in metrics
    sam = load_sam(run / "checkpoints" / "last.ckpt")
    assert sam.image_encoder.depth == 2 and sam.image_encoder.img_size == 64


def test_sam_export_matches_the_official_segment_anything_predictor(tmp_path):
    seg = pytest.importorskip("segment_anything")
    ours = tiny_sam(image_size=64)
    for p in ours.parameters():  # non-trivial values everywhere (zeros would hide mistakes)
        p.data.add_(torch.randn_like(p) * 0.02)
    src = tmp_path / "ours.safetensors"
    save_weights(src, ours.state_dict(), {"architecture": ours.architecture})
    out = export(src, "sam", tmp_path / "sam_official.pth")
    arch = json.loads(out.with_suffix(".json").read_text())["architecture"]
    official = build_official_sam(arch)
    official.load_state_dict(torch.load(out, weights_only=True), strict=True)
    official.eval()

    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    theirs = seg.SamPredictor(official)
    theirs.set_image(image)
    mine = SamPredictor(load_sam(src))
    mine.set_image(image)
    for prompt in [
        dict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1])),
        dict(box=np.array([5.0, 8.0, 40.0, 50.0]), multimask_output=False),
        dict(point_coords=np.array([[20.0, 30.0], [50.0, 10.0]]), point_labels=np.array([1, 0])),
    ]:
        m1, s1, l1 = theirs.predict(**prompt)
        m2, s2, l2 = mine.predict(**prompt)
        assert np.abs(s1 - s2).max() < 1e-4
        assert (torch.as_tensor(l1) - l2).abs().max() < 1e-4
        assert (m1 == m2).mean() > 0.999


def test_official_checkpoint_initialises_our_model_and_outputs_agree(tmp_path):
    pytest.importorskip("segment_anything")
    arch = tiny_sam().architecture
    torch.manual_seed(1)
    official = build_official_sam(arch).eval()
    path = tmp_path / "sam_vit_official.pth"
    torch.save(official.state_dict(), path)  # the layout of the published SAM checkpoints
    ours = tiny_sam()
    report = init_sam_from(ours, path)
    assert report.layout == "sam_official" and not report.new and not report.ignored
    ours.eval()
    images = torch.randn(1, 3, 64, 64)
    points = (torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        emb_theirs = official.image_encoder(images)
        sparse, dense = official.prompt_encoder(points=points, boxes=None, masks=None)
        theirs, iou_theirs = official.mask_decoder(
            emb_theirs, official.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
        mine, iou_mine = ours.decode(ours.embed_images(images), points=points)
    assert (emb_theirs - ours.embed_images(images)).abs().max() < 1e-4
    assert (theirs - mine).abs().max() < 1e-4 and (iou_theirs - iou_mine).abs().max() < 1e-4


def test_export_then_init_from_round_trips_exactly(tmp_path):
    ours = tiny_sam()
    src = tmp_path / "ours.safetensors"
    save_weights(src, ours.state_dict(), {"architecture": ours.architecture})
    official_path = export(src, "sam", tmp_path / "sam.pth")
    for path in (src, official_path):
        fresh = tiny_sam()
        torch.nn.init.zeros_(fresh.mask_decoder.iou_token.weight)
        init_sam_from(fresh, path)
        ref, got = ours.state_dict(), fresh.state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), path


def test_timm_export_of_a_sam_encoder_loads_into_timm_and_matches(tmp_path):
    timm_sam = pytest.importorskip("timm.models.vision_transformer_sam")
    ours = tiny_sam(image_size=64).eval()
    for p in ours.parameters():  # rel-pos tables start at zero: make every weight count
        p.data.add_(torch.randn_like(p) * 0.02)
    src = tmp_path / "ours.safetensors"
    save_weights(src, ours.state_dict(), {"architecture": ours.architecture})
    out = export(src, "timm", tmp_path / "encoder_timm.safetensors")
    theirs = timm_sam.VisionTransformerSAM(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        use_rel_pos=True,
        window_size=2,
        global_attn_indexes=(1,),
        neck_chans=32,
        num_classes=0,
    ).eval()
    theirs.load_state_dict(load_file(out), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ours.image_encoder(images)  # [2, 32, 4, 4]
        got = theirs.forward_features(images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
