"""What every stage's LightningModule shares, and the registry of stages.

A stage is one module here (`class XModule(StageModule, stage="x")`) and one config file
(`conf/stage/x.yaml`): the class statement registers it under its name, which checkpoints and
exports record, the config checks and checkpoint detection read (`registered_stages`), and
whose `level` (1: trains an encoder; 2: trains a whole SAM) tells what its checkpoints start.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any, ClassVar

import lightning as L

from sam_train.lit.guards import NonFiniteLossGuard
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


STAGES: dict[str, type[StageModule]] = {}


def registered_stages() -> dict[str, type[StageModule]]:
    """Every stage by name: imports each `*_module` of this package, whose class statements
    register their stages."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_module"):
            importlib.import_module(f"{__package__}.{info.name}")
    return dict(STAGES)


class StageModule(L.LightningModule):
    """Base of every stage: the run config, the seed and the non-finite guard, the stage
    name in checkpoints and exports, and the schedule derived from the trainer (printed and
    logged once). Subclasses set `self.model` and `self.optim` and build parameter groups.

    Args:
        run_config: the composed run config, stored in every checkpoint and export so a file
            alone says which architecture and recipe it holds.
        seed: per-step randomness is drawn from (seed, batches so far, rank).
        max_nonfinite: consecutive non-finite losses that stop the run (each one is skipped).

    Class keywords: `stage` (the `stage=` name; registers the class), `level` (1 or 2) and
    `batch_stage` (the stage whose data feeds it; its own name unless inherited).
    """

    name: ClassVar[str] = ""
    level: ClassVar[int] = 0
    batch_stage: ClassVar[str] = ""
    optim: OptimConfig
    derived: DerivedSchedule | None = None

    def __init_subclass__(
        cls,
        stage: str | None = None,
        level: int | None = None,
        batch_stage: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if stage is None:
            return
        cls.name = stage
        cls.level = level if level is not None else cls.level
        cls.batch_stage = batch_stage or cls.batch_stage or stage
        if cls.level not in (1, 2):
            raise TypeError(f"stage {stage!r} needs level=1 or level=2")
        STAGES[stage] = cls

    def __init__(
        self, run_config: dict | None = None, seed: int = 0, max_nonfinite: int = 20
    ) -> None:
        super().__init__()
        self.run_config = run_config
        self.seed = seed
        self.guard = NonFiniteLossGuard(max_nonfinite)

    # ------------------------------------------------------------------------- records
    def checkpoint_record(self) -> dict[str, Any]:
        """What a checkpoint says about its run (`checkpoint["sam_train"]`)."""
        return {"stage": self.name, "config": self.run_config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sam_train"] = self.checkpoint_record()

    def export_meta(self) -> dict[str, Any]:
        """Metadata every export of this run carries."""
        return {"stage": self.name, "config": self.run_config}

    # ------------------------------------------------------------------------- schedule
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
