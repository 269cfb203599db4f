"""`sam-prep teacher-embed`: a teacher's embeddings stored once in the shards (fp16), read back
into batches, equal to what the teacher gives on the fly; a rerun resumes without rewriting."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import call_main, run_cli, tiny_sam

from data_prep.add_member import model_input
from data_prep.sample import ensure_sample_shards
from sam_train.cli import prep as prep_cli
from sam_train.data.shard_datamodules import ShardSamDataModule
from sam_train.lit.distill_module import DistillModule
from sam_train.lit.optim import OptimConfig
from sam_train.lit.teacher_models import distill_student
from sam_train.models.teacher import load_teacher
from sam_train.weights.safetensors_io import save_weights

CACHE = Path(os.environ.get("SAM_TRAIN_CACHE", Path.home() / ".cache" / "sam_train"))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The sample's 5 validation images with a tiny teacher's embeddings at 64 px."""
    root = CACHE / "sample_shards"
    ensure_sample_shards(root)
    tmp = tmp_path_factory.mktemp("teacher_embed")
    sam = tiny_sam()
    teacher = tmp / "teacher.safetensors"
    save_weights(teacher, sam.state_dict(), {"architecture": sam.architecture})
    out = tmp / "shards"
    src = root / "sam" / "val"
    args = ["teacher-embed", src, out, "--teacher", teacher, "--image-size", "64"]
    res = run_cli("sam-prep", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return src, out, teacher, res


def members(shards: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.mark.slow
def test_every_sample_gets_the_teachers_fp16_embeddings_of_the_training_image(embedded):
    src, out, teacher, _ = embedded
    samples = members(out)
    assert samples.keys() == members(src).keys() and len(samples) == 5
    key, files = sorted(samples.items())[0]
    stored = np.load(io.BytesIO(files["teacher.npy"]))
    assert stored.dtype == np.float16 and stored.shape == (32, 4, 4)
    image, _, _ = model_input(files, 64)
    expected = load_teacher(str(teacher)).embeddings(image[None])[0]
    assert torch.allclose(torch.from_numpy(stored).float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_a_rerun_resumes_without_rewriting(embedded, capfd):
    src, out, teacher, _ = embedded
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    args = ["teacher-embed", src, out, "--teacher", teacher, "--image-size", "64"]
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


@pytest.mark.slow
def test_distillation_reads_precomputed_targets_equal_to_the_teachers(embedded):
    _, out, teacher, _ = embedded
    # flips on: a flipped image would have other embeddings than the stored ones (5 images:
    # the chance that none would have been flipped is 1/32)
    dm = ShardSamDataModule(
        str(out), img_size=64, batch_size=5, hflip=True, resampled=False, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.teacher_embeds is not None and batch.teacher_embeds.shape == (5, 32, 4, 4)
    module = DistillModule(
        distill_student(str(teacher), **tiny_sam().architecture), OptimConfig(lr=1e-3), teacher
    )
    precomputed, _, _ = module.embedding_loss(batch)
    batch.teacher_embeds = None
    on_the_fly, _, _ = module.embedding_loss(batch)
    assert precomputed.item() == pytest.approx(on_the_fly.item(), rel=1e-3)


def test_a_file_that_is_no_sam_stops_with_one_line(tmp_path, capfd):
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    args = ["teacher-embed", tmp_path, tmp_path / "out", "--teacher", bad]
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 2
    assert "bad.pth" in res.stderr and "Traceback" not in res.stderr
