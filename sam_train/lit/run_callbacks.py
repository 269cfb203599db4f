"""Lightning's best-checkpoint and model-summary callbacks, without their noise on our runs.

- `BestCheckpoint`: a run too short to compute the monitored metric (no validation yet) has no
  best checkpoint, quietly, instead of a warning that the key is missing at every save.
- `ParameterSummary`: the model summary without the FLOPs column and "Total FLOPs: 0" (Lightning
  counts FLOPs only for a module with an `example_input_array`, which ours do not define).
- `ResumeAwareProgressBar`: the epoch number and length on a run resumed mid-epoch.
- `StepCheckpoint`: every-N-steps checkpoints (last.ckpt) that hold the validation that follows
  their step, so a run killed during that validation validates again when resumed.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from sam_train.lit.progress import validation_follows

log = logging.getLogger("sam_train")


class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that skips, silently, saves made before the monitored metric exists."""

    def _save_topk_checkpoint(self, trainer, monitor_candidates: dict) -> None:
        never_validated = not trainer.fit_loop.epoch_loop.val_loop._has_run
        if self.monitor is not None and self.monitor not in monitor_candidates and never_validated:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose every-N-steps save of a step that validation follows (an epoch's
    last step) is made once that validation has ended.

    Lightning saves it before the validation and resumes such a file in the next epoch: a run
    killed during the validation would never validate that epoch, and even a completed
    validation's outcome (the best score, early-stopping counts) would be missing from the
    file. Saved after it, a kill during the validation resumes from the step before, trains
    that step again and validates, as the uninterrupted run did.
    """

    _after_validation: int | None = None  # the step whose save waits for the validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and validation_follows(trainer):
            self._after_validation = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # where Lightning's checkpoints save after a validation: at its end, or (validation once
    # an epoch) at the epoch's end, once the best checkpoint has taken its score
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_waiting(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_waiting(trainer)

    def _save_waiting(self, trainer) -> None:
        if self._after_validation != trainer.global_step or trainer.sanity_checking:
            return
        self._after_validation = None
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class ParameterSummary(ModelSummary):
    """Layers, parameter counts and modes; no FLOPs."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        widths = [max(len(name), *(len(v) for v in values)) for name, values in columns]
        rows = [[name for name, _ in columns]]
        rows += [list(r) for r in zip(*(values for _, values in columns))]
        table = "\n".join(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
        frozen = total_parameters - trainable_parameters
        log.info(
            "model:\n%s\n%s trainable, %s frozen parameters (%.1f MB); modules: %d train, %d eval",
            table,
            get_human_readable_count(trainable_parameters),
            get_human_readable_count(frozen),
            model_size,
            total_training_modes.get("train", 0),
            total_training_modes.get("eval", 0),
        )


class ResumeAwareProgressBar(TQDMProgressBar):
    """A run resumed in the middle of an epoch (from a step checkpoint) shows "Epoch N" and the
    epoch's length; Lightning skips `on_train_epoch_start` there and leaves "Training 3/?"."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.fit_loop.restarted_mid_epoch:
            self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")
