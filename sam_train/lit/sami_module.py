"""SAMI pretraining (EfficientSAM): stage 1 with a teacher SAM's features as the target.

Everything but the target is stage 1's `MaeModule`: seeded masks, exact resume, the schedule,
the encoder export (which `model.init_from` of stage 2 reads like any stage-1 encoder). The
teacher is held outside the module's registry: in no checkpoint, export or optimiser.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sam_train.lit.mae_module import MaeModule
from sam_train.lit.optim import OptimConfig
from sam_train.models.frozen import FrozenHelper
from sam_train.models.sami import SamiModel
from sam_train.models.teacher import SamTeacher, load_teacher

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class SamiModule(MaeModule, stage="sami"):
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
        self._teacher = FrozenHelper(t)  # in no checkpoint, optimiser or export

    @property
    def teacher(self) -> SamTeacher:
        """The frozen teacher, on this module's device."""
        return self._teacher.on(self.device, self.dtype)

    def images_and_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, (tuple, list)):
            images, features = batch
            return images, features
        return batch, self.teacher.features(batch)

    def loss(
        self, batch: Batch, seed: int, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, int]:
        images, features = self.images_and_targets(batch)
        noise = self.masking_noise(images, seed)
        loss, _, _ = self.model(images, features, mask_ratio=mask_ratio, noise=noise)
        return loss, images.shape[0]
