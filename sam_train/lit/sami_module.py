"""SAMI pretraining (EfficientSAM): stage 1 with a teacher SAM's features as the target.

Everything but the target is stage 1's `MaeModule`: seeded masks, exact resume, the schedule,
the encoder export (which `model.init_from` of stage 2 reads like any stage-1 encoder). The
teacher is held outside the module's registry: in no checkpoint, export or optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from sam_train.lit.mae_module import MaeModule
from sam_train.lit.optim import OptimConfig
from sam_train.lit.progress import batches_started
from sam_train.models.sami import SamiModel
from sam_train.models.teacher import HoldsFrozen, SamTeacher, load_teacher
from sam_train.seeding import sample_seed

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class SamiModule(HoldsFrozen, MaeModule):
    """Trains a `SamiModel` against a frozen teacher.

    Args:
        model: the student (`SamiModel`, its head as wide as the teacher's features).
        optim: optimiser and schedule settings.
        teacher: a SAM checkpoint path (any `load_sam` reads) or a `SamTeacher`.
        **kwargs: `MaeModule` arguments (run_config, val_seed, seed, max_nonfinite).

    Batches are images [B, 3, S, S] (the teacher runs on them each step) or
    (images, teacher features [B, D_t, h, w]) computed beforehand.
    """

    def __init__(
        self, model: SamiModel, optim: OptimConfig, teacher: str | SamTeacher, **kwargs
    ) -> None:
        super().__init__(model, optim, **kwargs)
        t = teacher if isinstance(teacher, nn.Module) else load_teacher(str(teacher))
        if t.feature_dim != model.target_dim:
            raise ValueError(
                f"the SAMI head predicts width {model.target_dim}, the teacher's features are "
                f"{t.feature_dim} wide: build the student with target_dim={t.feature_dim}"
            )
        self.hold_frozen("teacher", t)

    @property
    def teacher(self) -> SamTeacher:
        return self.frozen("teacher")

    def images_and_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, (tuple, list)):
            images, features = batch
            return images, features
        return batch, self.teacher.features(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        images, features = self.images_and_targets(batch)
        key = sample_seed(self.seed, batches_started(self.trainer), self.global_rank)
        loss, _, _ = self.model(images, features, noise=self.masking_noise(images, key))
        if not self.guard.ok(loss, self):
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, features = self.images_and_targets(batch)
        noise = self.validation_noise(images, batch_idx)
        loss, _, _ = self.model(images, features, noise=noise)
        self.log_val_loss(loss, images.shape[0], dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sam_train"] = {"stage": "sami", "config": self.run_config}

    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        out = super().exports()
        tensors, meta = out["encoder"]
        return {"encoder": (tensors, {**meta, "stage": "sami"})}
