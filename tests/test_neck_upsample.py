"""`model.neck_upsample`: a ViT SAM encoder whose embedding grid is the patch grid times 1, 2 or
4, so a ViT/16 student meets a finer teacher grid; shapes, the unchanged default, checkpoint
round trips, ONNX and sam-predict, and the formats that refuse it."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import console_script, tiny_sam
from PIL import Image

from sam_train.models.sam.image_encoder import ImageEncoderViT
from sam_train.models.teacher import SamTeacher
from sam_train.weights.checkpoints import WeightsError
from sam_train.weights.export import export
from sam_train.weights.safetensors_io import save_weights
from sam_train.weights.sam_loading import load_sam

# tiny_sam: 64 px, patch 16 -> a 4 x 4 patch grid


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_embedding_grid_is_the_patch_grid_times_the_factor(factor):
    sam = tiny_sam(neck_upsample=factor)
    grid = 4 * factor
    assert sam.prompt_encoder.image_embedding_size == (grid, grid)
    assert sam.image_encoder.embedding_stride == 16 // factor
    with torch.no_grad():
        emb = sam.embed_images(torch.randn(2, 3, 64, 64))  # [2, 32, grid, grid]
        assert emb.shape == (2, 32, grid, grid)
        low, iou = sam.decode(emb, boxes=torch.tensor([[4.0, 4, 40, 40], [8, 8, 30, 50]]))
        assert low.shape == (2, 3, 4 * grid, 4 * grid) and iou.shape == (2, 3)
        # another input size divisible by the patch: the grid follows it
        assert sam.embed_images(torch.randn(1, 3, 96, 48)).shape == (1, 32, 6 * factor, 3 * factor)
    ups = [m for m in sam.image_encoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == factor.bit_length() - 1


def test_factor_one_is_the_plain_encoder_tensor_for_tensor():
    plain, one = tiny_sam(), tiny_sam(neck_upsample=1)  # same seed
    a, b = plain.state_dict(), one.state_dict()
    assert list(a) == list(b) and not any("upsample" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 64, 64)
    enc = one.image_encoder
    with torch.no_grad():
        assert torch.equal(enc(x), enc.neck(enc.forward_grid(x)))


def test_a_factor_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="neck_upsample=3"):
        ImageEncoderViT(
            img_size=64,
            patch_size=16,
            embed_dim=32,
            depth=1,
            num_heads=2,
            global_attn_indexes=(),
            neck_upsample=3,
        )
    with pytest.raises(ValueError, match="divides the patch size 2"):
        ImageEncoderViT(
            img_size=64,
            patch_size=2,
            embed_dim=32,
            depth=1,
            num_heads=2,
            global_attn_indexes=(),
            neck_upsample=4,
        )


@pytest.fixture(scope="module")
def upsampled(tmp_path_factory):
    """A tiny SAM with neck_upsample=4 saved as our export (architecture recorded) and as a
    bare state dict (architecture read from the shapes)."""
    sam = tiny_sam(neck_upsample=4)
    folder = tmp_path_factory.mktemp("up")
    export_path = folder / "sam.safetensors"
    save_weights(export_path, sam.state_dict(), {"architecture": sam.architecture})
    bare = folder / "bare.pth"
    torch.save(sam.state_dict(), bare)
    return sam.eval(), export_path, bare


def test_a_checkpoint_keeps_the_factor(upsampled):
    sam, export_path, bare = upsampled
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = sam.embed_images(x)
        for path in (export_path, bare):
            back = load_sam(path)
            assert back.architecture["neck_upsample"] == 4
            assert torch.equal(back.embed_images(x), want)


def test_official_and_hf_and_timm_formats_refuse_it_in_one_line(upsampled, tmp_path):
    _, export_path, _ = upsampled
    for fmt in ("sam", "hf", "timm"):
        with pytest.raises(WeightsError, match=f"--format {fmt}: .*upsampling neck"):
            export(export_path, fmt, tmp_path / f"out_{fmt}")
        assert not (tmp_path / f"out_{fmt}").exists()
    res = subprocess.run(
        [
            console_script("sam-export"),
            str(export_path),
            "--format",
            "sam",
            "--out",
            str(tmp_path / "x.pth"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "neck_upsample" in res.stderr
    assert not (tmp_path / "x.pth").exists()


def test_onnx_export_and_sam_predict_run_it(upsampled, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    sam, export_path, _ = upsampled
    out = export(export_path, "onnx", tmp_path / "onnx")
    assert json.loads((out / "preprocess.json").read_text())["image_size"] == 64

    def session(name):
        return ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])

    x = torch.randn(1, 3, 64, 64)
    (emb,) = session("encoder.onnx").run(None, {"images": x.numpy()})
    with torch.no_grad():
        ours = sam.embed_images(x)
    assert emb.shape == (1, 32, 16, 16) and np.abs(emb - ours.numpy()).max() < 1e-4
    box = np.array([[[4.0, 4.0], [40.0, 40.0]]], np.float32)
    feeds = {
        "image_embeddings": emb,
        "point_coords": box,
        "point_labels": np.array([[2, 3]], np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([64, 64], np.float32),
    }
    _, _, low = session("decoder.onnx").run(None, feeds)
    with torch.no_grad():
        ref, _ = sam.decode(ours, boxes=torch.tensor([[4.0, 4, 40, 40]]), multimask_output=None)
    assert low.shape[-2:] == (64, 64) and np.abs(low - ref.numpy()).max() < 1e-4

    rgb = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    res = subprocess.run(
        [
            console_script("sam-predict"),
            str(export_path),
            "--image",
            str(tmp_path / "x.png"),
            "--box",
            "5,5,40,30",
            "--out",
            str(tmp_path / "pred.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "pred.png").stat().st_size > 0


def test_the_grid_mismatch_message_offers_the_upsampling_neck():
    from sam_train.lit.teacher_models import embedding_grid_problem

    teacher = SamTeacher(tiny_sam(neck_upsample=4))  # 64 px, 16 x 16 embeddings
    problem = embedding_grid_problem(64, 16, teacher)
    assert "student gives 4 x 4" in problem and "teacher 16 x 16" in problem
    assert "model.neck_upsample=4" in problem and "model.image_size=256" in problem
    assert embedding_grid_problem(64, 16, teacher, neck_upsample=4) is None
    assert "model.neck_upsample=2" in embedding_grid_problem(128, 16, teacher)
