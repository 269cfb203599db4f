"""What both stages' LightningModules share: the derived schedule and the optimiser hand-off."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from sam_train.lit.optim import (
    DerivedSchedule,
    OptimConfig,
    build_optimizer,
    derive_schedule,
    lr_warning,
)

log = logging.getLogger(__name__)


def effective_batch_size(trainer: L.Trainer, batch_size: int) -> int:
    """Images per optimiser step over every device and accumulation step."""
    return batch_size * trainer.accumulate_grad_batches * trainer.world_size


class StageModule(L.LightningModule):
    """Base of `MaeModule` and `SamModule`: subclasses set `self.optim` and build parameter
    groups; this class derives the schedule from the trainer, prints and logs it once."""

    optim: OptimConfig
    derived: DerivedSchedule | None = None

    def derive_schedule(self) -> DerivedSchedule:
        trainer = self.trainer
        total = max(int(trainer.estimated_stepping_batches), 1)
        steps_per_epoch = total / max(trainer.max_epochs or 1, 1)
        batch = effective_batch_size(trainer, trainer.datamodule.batch_size)
        self.derived = derive_schedule(self.optim, batch, total, steps_per_epoch)
        log.info("%s optimiser: %s", type(self).__name__, self.derived.describe())
        warning = lr_warning(self.optim, self.derived)
        if warning is not None and trainer.is_global_zero:
            log.warning(warning)
        return self.derived

    def optimizer_config(self, groups: list[dict]) -> dict[str, Any]:
        """AdamW over `groups` with the per-step schedule, as Lightning expects it."""
        optimizer, scheduler = build_optimizer(groups, self.optim, self.derive_schedule())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_fit_start(self) -> None:
        if self.derived is not None and self.logger is not None:
            self.logger.log_hyperparams(
                {f"derived/{k}": v for k, v in self.derived.as_dict().items()}
            )
