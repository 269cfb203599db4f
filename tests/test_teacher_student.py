"""Teacher-student stages at tiny sizes: SAMI's masking and targets, distillation's loss and
grid check, the teacher kept out of checkpoints, and the student going on to stage 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sam

from sam_train.data.batch import SamBatch
from sam_train.lit.distill_module import DistillModule
from sam_train.lit.optim import OptimConfig
from sam_train.lit.sami_module import SamiModule
from sam_train.lit.teacher_models import distill_student, sami_student
from sam_train.models.sami import SamiModel
from sam_train.models.teacher import SamTeacher, load_teacher
from sam_train.weights.safetensors_io import save_weights

MAE_TINY = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)
# the student of `tiny_sam` (64 px / 16 = 4 x 4 grid): half the width, 32 px / 8 = the same grid
SAM_STUDENT = dict(
    encoder_embed_dim=16,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=32,
    patch_size=8,
    window_size=2,
)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A tiny SAM (width 32, 64 px, 4 x 4 embeddings of 32 channels) saved as our export."""
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return str(path)


def sam_batch(images: torch.Tensor) -> SamBatch:
    b, _, s, _ = images.shape
    masks = torch.zeros(b, 1, s, s, dtype=torch.bool)
    masks[:, 0, s // 4 : s // 2, s // 4 : s // 2] = True
    boxes = torch.tensor([[s / 4, s / 4, s / 2, s / 2]]).expand(b, 1, 4)
    return SamBatch(
        images,
        masks,
        torch.ones(b, 1, dtype=torch.bool),
        boxes,
        torch.full((b, 1), -1),
        image_hw=torch.tensor([[s, s]] * b),
    )


# ----------------------------------------------------------------------------- the teacher
def test_teacher_is_frozen_in_eval_mode_and_gives_both_targets(teacher_path):
    teacher = load_teacher(teacher_path)
    teacher.train()
    assert not teacher.training and not teacher.sam.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(2, 3, 32, 32)  # the student's size: resized to the teacher's 64 px
    assert teacher.features(images).shape == (2, 32, 4, 4)  # pre-neck: the ViT width
    assert teacher.embeddings(images).shape == (2, 32, 4, 4)  # after the neck: prompt width
    student_out = torch.zeros(2, 32, 4, 4, requires_grad=True)
    F.mse_loss(student_out, teacher.features(images)).backward()  # usable as a target


# ----------------------------------------------------------------------------- SAMI
def test_sami_head_projects_to_the_teacher_width(teacher_path):
    student = sami_student(teacher_path, **MAE_TINY)
    assert student.decoder_pred.out_features == 32 == load_teacher(teacher_path).feature_dim
    features = torch.randn(2, 32, 4, 4)
    loss, pred, mask = student(torch.randn(2, 3, 32, 32), features)
    assert pred.shape == (2, 16, 32) and mask.shape == (2, 16) and loss.ndim == 0


@pytest.mark.parametrize("tokens", ["all", "masked", "visible"])
def test_sami_scores_exactly_the_tokens_it_says(tokens):
    torch.manual_seed(0)
    model = SamiModel(target_dim=8, loss_tokens=tokens, **MAE_TINY)
    mask = (torch.rand(2, 16) < 0.75).float()  # 1 = masked
    target = torch.randn(2, 16, 8)
    wrong = target + 1.0  # error 1 on every channel
    pred_masked_right = torch.where(mask[..., None] > 0, target, wrong)
    pred_visible_right = torch.where(mask[..., None] > 0, wrong, target)
    right_on_masked = model.forward_feature_loss(pred_masked_right, target, mask)
    right_on_visible = model.forward_feature_loss(pred_visible_right, target, mask)
    expected = {
        "all": (1 - mask.mean(), mask.mean()),
        "masked": (0.0, 1.0),
        "visible": (1.0, 0.0),
    }[tokens]
    assert right_on_masked.item() == pytest.approx(float(expected[0]), abs=1e-6)
    assert right_on_visible.item() == pytest.approx(float(expected[1]), abs=1e-6)


def test_sami_masks_as_mae_and_the_loss_reaches_every_scored_token():
    torch.manual_seed(0)
    model = SamiModel(target_dim=8, loss_tokens="masked", mask_ratio=0.75, **MAE_TINY)
    images, features = torch.randn(2, 3, 32, 32), torch.randn(2, 8, 4, 4)
    noise = torch.rand(2, 16)
    loss, pred, mask = model(images, features, noise=noise)
    assert mask.sum(1).tolist() == [12, 12]  # L - int(L * (1 - ratio)) masked per image
    kept = torch.argsort(noise, 1)[:, :4]
    assert mask.gather(1, kept).sum() == 0  # the lowest noise is kept (visible), as in MAE
    target = model.feature_targets(features, (4, 4))
    manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_sami_targets_are_resampled_to_the_student_grid_and_normalised_per_token():
    model = SamiModel(target_dim=8, **MAE_TINY)
    features = torch.randn(2, 8, 8, 8) * 5 + 3  # a teacher with an 8 x 8 grid
    target = model.feature_targets(features, (4, 4))
    assert target.shape == (2, 16, 8)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)
    raw = SamiModel(target_dim=8, norm_target=False, **MAE_TINY)
    same_grid = torch.randn(2, 8, 4, 4)
    assert torch.equal(raw.feature_targets(same_grid, (4, 4)), same_grid.flatten(2).mT)


def test_sami_module_keeps_the_teacher_out_of_state_and_optimiser(teacher_path):
    student = sami_student(teacher_path, **MAE_TINY)
    module = SamiModule(student, OptimConfig(lr=1e-3), teacher=SamTeacher(tiny_sam()))
    assert all(k.startswith("model.") for k in module.state_dict())
    assert not any("teacher" in k or k.startswith("model.sam") for k in module.state_dict())
    n_student = sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in module.parameters()) == n_student
    module.to(torch.float64)  # the held teacher moves with the module
    assert next(module.teacher.parameters()).dtype == torch.float64


def test_sami_module_refuses_a_head_of_another_width(teacher_path):
    with pytest.raises(ValueError, match="width 8.*32 wide"):
        SamiModule(SamiModel(target_dim=8, **MAE_TINY), OptimConfig(lr=1e-3), teacher_path)


# ----------------------------------------------------------------------------- distillation
def test_distill_student_is_a_complete_sam_with_the_teacher_decoder(teacher_path):
    student = distill_student(teacher_path, **SAM_STUDENT)
    teacher = load_teacher(teacher_path).sam
    for part in ("prompt_encoder", "mask_decoder"):
        mine, theirs = getattr(student, part).state_dict(), getattr(teacher, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert student.image_encoder.embed_dim == 16  # the student's own encoder width
    assert student.image_encoder(torch.randn(1, 3, 32, 32)).shape == (1, 32, 4, 4)


def test_distill_loss_is_zero_when_the_student_is_a_teacher_copy(teacher_path):
    teacher = load_teacher(teacher_path)
    student = distill_student(teacher_path, **tiny_sam().architecture)
    student.load_state_dict(teacher.sam.state_dict())
    module = DistillModule(student, OptimConfig(lr=1e-3), teacher=teacher)
    loss, _, _ = module.embedding_loss(sam_batch(torch.randn(2, 3, 64, 64)))
    assert loss.item() == 0.0
    other = DistillModule(
        distill_student(teacher_path, **SAM_STUDENT), OptimConfig(lr=1e-3), teacher=teacher
    )
    loss, _, _ = other.embedding_loss(sam_batch(torch.randn(2, 3, 32, 32)))
    assert loss.item() > 0.0


def test_distill_refuses_another_embedding_grid_naming_both_sizes(teacher_path):
    with pytest.raises(ValueError, match=r"student gives 8 x 8.*teacher 4 x 4"):
        distill_student(teacher_path, **{**SAM_STUDENT, "image_size": 64})


def test_distill_decoder_trains_only_from_its_phase_and_is_in_the_optimiser_from_the_start(
    teacher_path,
):
    module = DistillModule(
        distill_student(teacher_path, **SAM_STUDENT),
        OptimConfig(lr=1e-3),
        teacher=teacher_path,
        decoder_phase_start=3,
    )
    decoder = list(module.model.mask_decoder.parameters())
    assert not any(p.requires_grad for p in decoder)
    assert not module.in_decoder_phase(2) and module.in_decoder_phase(3)
    module._set_decoder_trainable(module.in_decoder_phase(3))
    assert all(p.requires_grad for p in decoder)
    assert not any("teacher" in k for k in module.state_dict())


# ----------------------------------------------------------------------------- resume
class FixedBatches:
    """The same two SAM batches every epoch, in order: resumed at an epoch's end, a run reads
    what the uninterrupted one read, so any difference is the module's."""

    def __init__(self, size: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [sam_batch(torch.randn(2, 3, size, size, generator=gen)) for _ in range(2)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> SamBatch:
        return self.batches[i]


def fit_distill(teacher_path, tmp_path, max_steps: int, ckpt_path=None) -> DistillModule:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    module = DistillModule(
        distill_student(teacher_path, **SAM_STUDENT),
        OptimConfig(lr=1e-2, warmup_steps=0, schedule="cosine"),
        teacher=teacher_path,
        decoder_phase_start=3,  # after the resume point: the phase must follow the step
        mask_targets="teacher",
        max_masks_per_image=2,
    )
    module.interactive.num_click_rounds = 1

    class Data(L.LightningDataModule):
        batch_size = 2

        def train_dataloader(self):
            return DataLoader(FixedBatches(32), batch_size=None, shuffle=False)

    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(module, datamodule=Data(), ckpt_path=ckpt_path)
    return module


@pytest.mark.slow
def test_distillation_resumed_before_its_decoder_phase_gives_the_uninterrupted_weights(
    teacher_path, tmp_path
):
    straight = fit_distill(teacher_path, tmp_path / "a", max_steps=6)
    (ckpt,) = (tmp_path / "a").glob("*step=2.ckpt")  # the end of the first epoch
    resumed = fit_distill(teacher_path, tmp_path / "b", max_steps=6, ckpt_path=ckpt)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    first = load_teacher(teacher_path).sam.mask_decoder.state_dict()
    mine = straight.model.mask_decoder.state_dict()
    assert any(not torch.equal(mine[k], first[k]) for k in first), "the decoder did not train"


def test_distill_student_can_start_from_the_teachers_output_norm(teacher_path):
    """`teacher_output_norm`: the student's last LayerNorm2d (here its upsampling's) takes the
    teacher's per-channel scale and offset; without it the student keeps its own init."""
    from sam_train.weights.decoder_transplant import output_norm

    teacher = load_teacher(teacher_path).sam  # cached: its change is undone below
    shift = torch.linspace(-1, 1, 32)
    with torch.no_grad():  # a teacher whose output norm is not the identity
        output_norm(teacher.image_encoder).bias.add_(shift)
    try:
        arch = {**SAM_STUDENT, "image_size": 16, "neck_upsample": 2}  # 16 / 8 * 2 = 4 x 4
        student = distill_student(teacher_path, teacher_output_norm=True, **arch)
        mine, theirs = output_norm(student.image_encoder), output_norm(teacher.image_encoder)
        assert mine is student.image_encoder.upsample[-1]
        assert torch.equal(mine.bias, theirs.bias) and torch.equal(mine.weight, theirs.weight)
    finally:
        with torch.no_grad():
            output_norm(teacher.image_encoder).bias.sub_(shift)
    plain = output_norm(distill_student(teacher_path, **arch).image_encoder)
    assert torch.equal(plain.bias, torch.zeros(32))
