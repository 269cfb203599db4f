"""The students of the teacher-student stages as training builds them (Hydra `_target_`s).

`sami_student` sizes the SAMI head to the teacher's width; `distill_student` builds a SAM whose
prompt encoder and mask decoder are copies of the teacher's, so the student is a complete SAM
from the first step. The teacher itself is loaded once per process (`load_teacher`) and never
becomes part of the student.
"""

from __future__ import annotations

import logging

from sam_train.lit.sam_model import trainable_sam
from sam_train.models.sam.sam import Sam
from sam_train.models.sami import SamiModel
from sam_train.models.teacher import SamTeacher, load_teacher
from sam_train.weights.decoder_transplant import DECODER_ARGS, copy_decoder, copy_output_norm

log = logging.getLogger(__name__)


def sami_student(teacher: str, init_from: str | None = None, **mae_args) -> SamiModel:
    """A `SamiModel` whose decoder predicts `teacher`'s pre-neck features (its width), its
    encoder optionally `init_from` a stage-1 checkpoint or ViT weights (as stage 1 reads them)."""
    student = SamiModel(target_dim=load_teacher(str(teacher)).feature_dim, **mae_args)
    if init_from:
        from sam_train.weights.init import init_mae_from

        report = init_mae_from(student, init_from)
        print(f"[sam-train] {report.summary()}", flush=True)
    return student


def embedding_grid_problem(
    student_image_size: int, student_patch: int, teacher: SamTeacher, neck_upsample: int = 1
) -> str | None:
    """Why a student cannot regress the teacher's embeddings, or None: the grids must match.
    The message names each one-setting fix that works (input size, patch, neck upsampling)."""
    from sam_train.models.sam.image_encoder import NECK_UPSAMPLE_FACTORS

    size, patch, up, want = student_image_size, student_patch, neck_upsample, teacher.grid
    grid = size // patch * up
    if grid == want:
        return None
    fixes = []
    if (want * patch) % up == 0:
        fixes.append(f"model.image_size={want * patch // up}")
    if (size * up) % want == 0 and (size * up) // want > 0:
        new_patch = size * up // want
        if size % new_patch == 0 and new_patch % up == 0:
            fixes.append(f"model.patch_size={new_patch}")
    for f in NECK_UPSAMPLE_FACTORS:
        if f != up and size // patch * f == want and patch % f == 0:
            fixes.append(f"model.neck_upsample={f}")
    upsampled = f" x model.neck_upsample={up}" if up != 1 else ""
    return (
        f"distillation needs the student's embedding grid to match the teacher's: the student "
        f"gives {grid} x {grid} (model.image_size={size} / model.patch_size={patch}"
        f"{upsampled}), the teacher {want} x {want} ({teacher.input_size} px / "
        f"{teacher.patch_size} px per cell); set {' or '.join(fixes) or 'a matching size'}"
    )


def distill_student(
    teacher: str,
    init_from: str | None = None,
    teacher_output_norm: bool = False,
    **architecture,
) -> Sam:
    """A SAM student: its image encoder as configured (optionally `init_from` a stage-1
    checkpoint), its prompt encoder and mask decoder copied from `teacher` (and built with the
    teacher's decoder sizes, whatever the config says). `teacher_output_norm`: also start the
    encoder's last LayerNorm2d from the teacher's (`copy_output_norm`)."""
    architecture.pop("freeze_encoder", None)  # the distillation stage decides what trains
    if architecture.pop("decoder_from", None):
        raise ValueError(
            "stage=distill copies the teacher's prompt encoder and mask decoder; drop "
            "model.decoder_from (or train stage=sam with it)"
        )
    t = load_teacher(str(teacher))
    problem = embedding_grid_problem(
        architecture.get("image_size", 1024),
        architecture.get("patch_size", 16),
        t,
        architecture.get("neck_upsample", 1),
    )
    if problem:
        raise ValueError(problem)
    teacher_arch = t.sam.architecture
    changed = {
        k: (architecture.get(k), teacher_arch[k])
        for k in DECODER_ARGS
        if k in teacher_arch and architecture.get(k, teacher_arch[k]) != teacher_arch[k]
    }
    if changed:
        log.info("decoder sizes taken from the teacher: %s", changed)
    architecture.update({k: teacher_arch[k] for k in DECODER_ARGS if k in teacher_arch})
    sam = trainable_sam(init_from=init_from, **architecture)
    copy_decoder(sam, t.sam)
    if teacher_output_norm and not copy_output_norm(sam, t.sam):
        raise ValueError(
            "model.teacher_output_norm=true needs student and teacher encoders that both end in "
            "a LayerNorm2d of the embedding width"
        )
    return sam


def teacher_problems(cfg) -> list[str]:
    """Checks of a `stage=sami|distill` run config before anything is built: the student is a
    model of the stage, the teacher file loads as a SAM, and (distillation) the grids match."""
    from pathlib import Path

    from sam_train.weights.checkpoints import WeightsError

    stage, model = cfg.stage.name, cfg.model
    kind = "mae_vit_*" if stage == "sami" else "sam_vit_*"
    if ("mask_ratio" in model) != (stage == "sami"):
        return [f"stage={stage} trains a model={kind} student; pick one of those"]
    path = model.get("teacher")
    if not path or not Path(str(path)).is_file():
        return [
            f"model.teacher={path} is not a file: give a SAM checkpoint (ours, an export, or "
            "the official sam_vit_*.pth)"
        ]
    try:
        teacher = load_teacher(str(path))
    except WeightsError as err:
        return [f"model.teacher: {err}"]
    if stage == "distill":
        problem = embedding_grid_problem(
            model.image_size, model.patch_size, teacher, model.get("neck_upsample", 1)
        )
        return [problem] if problem else []
    return []
