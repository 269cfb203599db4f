"""`sam-train stage=sami` and `stage=distill`: the student's checkpoint and export hold no
teacher, a SAMI student goes on to stage 2 through `model.init_from`, a distilled student is a
complete SAM with the teacher's decoder, a wrong grid stops the run in one line (runs composed
and trained in this process), and a killed `sam-train` process resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    DISTILL_TINY,
    SAMI_TINY,
    call_main,
    sam_train_main,
    tiny_sam,
    train_in_process,
)

from sam_train.weights.init import init_sam_from
from sam_train.weights.safetensors_io import save_weights
from sam_train.weights.sam_loading import load_sam


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny SAM teacher (width 32, 64 px / 16 = 4 x 4 embeddings) saved as our export."""
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """`sam-train` called in this process as from a shell in `tmp_path` (runs under ./outputs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    return tmp_path


def checkpoint_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sami_run_exports_a_student_encoder_that_stage2_initialises_from(tmp_path, teacher):
    run = tmp_path / "sami"
    train_in_process([*SAMI_TINY, f"model.teacher={teacher}"], run)
    state = checkpoint_state(run)
    assert all(k.startswith("model.") for k in state)
    assert state["model.decoder_pred.weight"].shape == (32, 32)  # to the teacher's width
    assert not any(".neck." in k or "mask_decoder" in k for k in state)  # no teacher inside
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["sam_train"]["stage"] == "sami"
    for source in (run / "checkpoints" / "last.ckpt", run / "export" / "encoder.safetensors"):
        sam = tiny_sam(encoder_embed_dim=32, image_size=32, patch_size=8)
        report = init_sam_from(sam, source)
        blocks = [k for k in report.loaded if ".blocks." in k]
        assert len(blocks) == len([k for k in state if k.startswith("model.encoder.blocks.")])
        enc = sam.image_encoder.state_dict()
        assert torch.equal(
            enc["blocks.1.mlp.fc2.weight"], state["model.encoder.blocks.1.mlp.fc2.weight"]
        )
        assert "image_encoder.patch_embed.proj.weight" in report.loaded


@pytest.mark.slow
def test_distill_run_exports_a_complete_sam_with_the_frozen_teacher_decoder(
    tmp_path, teacher, capsys
):
    run = tmp_path / "distill"
    train_in_process([*DISTILL_TINY, f"model.teacher={teacher}"], run)
    assert "val/miou_point_confident" in capsys.readouterr().out
    student = load_sam(run / "export" / "sam.safetensors")
    original = load_sam(teacher)
    for part in ("prompt_encoder", "mask_decoder"):
        mine, theirs = getattr(student, part).state_dict(), getattr(original, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f"{part} changed"
    assert student.image_encoder.embed_dim == 16
    assert not any(k.startswith("teacher") for k in checkpoint_state(run))
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "val/loss_embed" in metrics and "train/loss_embed" in metrics


def test_distill_with_another_embedding_grid_stops_naming_both_sizes(in_tmp, teacher, capfd):
    tmp_path = in_tmp
    args = [*DISTILL_TINY, f"model.teacher={teacher}", "model.image_size=64"]
    res = call_main(sam_train_main, args, capfd)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "the student gives 8 x 8" in res.stderr and "the teacher 4 x 4" in res.stderr
    assert "model.image_size=32" in res.stderr  # the fix
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.ckpt"))


def test_a_missing_teacher_stops_the_run_with_the_key(in_tmp, capfd):
    res = call_main(sam_train_main, [*SAMI_TINY, f"model.teacher={in_tmp / 'nope.pth'}"], capfd)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.teacher=" in res.stderr and "is not a file" in res.stderr
