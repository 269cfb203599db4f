"""Decoupled distillation (MobileSAM): a student image encoder (+ neck) regresses a teacher
SAM's image embeddings; the teacher's prompt encoder and mask decoder, copied into the student
(`sam_train.lit.teacher_models.distill_student`), stay frozen, so every checkpoint and export
is a complete SAM. From `decoder_phase_start` on (optional), the prompt encoder and decoder
train too, with the interactive prompt loss against ground-truth masks or the teacher's.

Validation is stage 2's (one point, one box, clicks) plus `val/loss_embed`. The teacher is held
outside the module's registry: in no checkpoint, export or optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.data.batch import SamBatch
from sam_train.lit.optim import OptimConfig
from sam_train.lit.sam_module import SamModule
from sam_train.lit.teacher_models import embedding_grid_problem
from sam_train.models.frozen import FrozenHelper
from sam_train.models.sam.sam import Sam
from sam_train.models.teacher import SamTeacher, load_teacher
from sam_train.training.interactive import interactive_loss
from sam_train.training.prompts import select_masks
from sam_train.training.teacher_masks import teacher_mask_targets

MASK_TARGETS = ("gt", "teacher")


class DistillModule(SamModule, stage="distill"):
    """Distils a teacher SAM's image embeddings into `model`'s image encoder.

    Args:
        model: the student `Sam` (decoder copied from the teacher).
        optim: optimiser and schedule (layer-wise decay on the image encoder).
        teacher: a SAM checkpoint path (any `load_sam` reads) or a `SamTeacher`.
        decoder_phase_start: optimiser step from which the prompt encoder and mask decoder
            train with prompts; None = never (embedding regression only).
        mask_targets: "gt" (annotated masks) or "teacher" (the teacher's mask for each
            annotated mask's box) in the decoder phase.
        embed_loss_weight: weight of the embedding MSE (kept in the decoder phase).
        **kwargs: `SamModule` arguments (interactive, run_config, mask limits, seed, ...).
    """

    def __init__(
        self,
        model: Sam,
        optim: OptimConfig,
        teacher: str | SamTeacher,
        decoder_phase_start: int | None = None,
        mask_targets: str = "gt",
        embed_loss_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(model, optim, **kwargs)
        if mask_targets not in MASK_TARGETS:
            raise ValueError(f"mask_targets must be one of {MASK_TARGETS}, got {mask_targets!r}")
        t = teacher if isinstance(teacher, nn.Module) else load_teacher(str(teacher))
        enc = model.image_encoder
        problem = embedding_grid_problem(
            enc.img_size, enc.patch_size, t, getattr(enc, "neck_upsample", 1)
        )
        if problem is None and enc.out_chans != t.embedding_dim:
            problem = (
                f"the student's embeddings have {enc.out_chans} channels, the teacher's "
                f"{t.embedding_dim}: set model.prompt_embed_dim={t.embedding_dim}"
            )
        if problem:
            raise ValueError(problem)
        self._teacher = FrozenHelper(t)  # in no checkpoint, optimiser or export
        self.decoder_phase_start = decoder_phase_start
        self.mask_targets = mask_targets
        self.embed_loss_weight = embed_loss_weight
        self._set_decoder_trainable(False)

    @property
    def teacher(self) -> SamTeacher:
        """The frozen teacher, on this module's device."""
        return self._teacher.on(self.device, self.dtype)

    # ------------------------------------------------------------------------- phases
    def in_decoder_phase(self, step: int | None = None) -> bool:
        step = self.global_step if step is None else step
        return self.decoder_phase_start is not None and step >= self.decoder_phase_start

    def _decoder_parts(self) -> list[nn.Module]:
        return [self.model.prompt_encoder, self.model.mask_decoder]

    def _set_decoder_trainable(self, trainable: bool) -> None:
        for part in self._decoder_parts():
            part.requires_grad_(trainable)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # a function of the step alone, so a resumed run is in the phase it left
        self._set_decoder_trainable(self.in_decoder_phase())

    def configure_optimizers(self) -> dict[str, Any]:
        # the decoder joins the optimiser from the start when it will train (no state until
        # its first gradient), so the optimiser's layout does not change at the phase switch
        self._set_decoder_trainable(self.decoder_phase_start is not None)
        try:
            return super().configure_optimizers()
        finally:
            self._set_decoder_trainable(self.in_decoder_phase())

    # ------------------------------------------------------------------------- steps
    def teacher_embeddings(self, batch: SamBatch) -> torch.Tensor:
        """[B, C, h, w]: precomputed in the batch, or the teacher run on its images."""
        pre = getattr(batch, "teacher_embeds", None)
        return pre if pre is not None else self.teacher.embeddings(batch.images)

    def embedding_loss(self, batch: SamBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean squared error of the student's embeddings against the teacher's; returns
        (loss, student embeddings, teacher embeddings), both [B, C, h, w]."""
        target = self.teacher_embeddings(batch)
        embeddings = self.model.embed_images(batch.images)
        return F.mse_loss(embeddings, target.to(embeddings.dtype)), embeddings, target

    def training_step(self, batch: SamBatch, batch_idx: int) -> torch.Tensor | None:
        loss_embed, embeddings, target = self.embedding_loss(batch)
        loss = self.embed_loss_weight * loss_embed
        bs = batch.batch_size
        if self.in_decoder_phase():
            loss = loss + self._prompt_loss(batch, embeddings, target, bs)
        if not self.guard.ok(loss, self):
            return None
        self.log("train/loss_embed", loss_embed, batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def _prompt_loss(
        self, batch: SamBatch, embeddings: torch.Tensor, teacher_emb: torch.Tensor, bs: int
    ) -> torch.Tensor:
        gen = self._generator(stream=0)
        targets = select_masks(
            batch, self.max_masks_per_image, self.max_mask_fraction, self.min_mask_area, gen
        )
        if self.mask_targets == "teacher":
            targets = teacher_mask_targets(self.teacher, teacher_emb, targets)
        result = interactive_loss(self.model, embeddings, targets, self.interactive, gen)
        for name, value in result.losses.items():
            self.log(f"train/mask_{name}", value, batch_size=bs)
        return result.losses["loss"]

    def validation_embeddings(self, batch: SamBatch) -> torch.Tensor:
        loss, embeddings, _ = self.embedding_loss(batch)
        self.log("val/loss_embed", loss, sync_dist=True, batch_size=batch.batch_size)
        return embeddings
