"""Where training stands, from Lightning's loop counters (restored from checkpoints), and
whether validation follows the batch now ending. They sit in Lightning's private loop objects;
this is the one place that reads them."""

from __future__ import annotations

import lightning as L


def batches_started(trainer: L.Trainer) -> int:
    """Training batches started in the whole run (batch_idx restarts after a resume)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


def epoch_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """(epoch, batches of it already trained) where a run restored from a checkpoint goes on;
    (0, 0) for a fresh run. Lightning restores its loop counters before it asks for the
    training loader, so they say where the checkpoint was taken."""
    if trainer is None:
        return 0, 0
    return trainer.current_epoch, int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch now ending (an epoch's last
    batch, or a `val_check_interval` batch)."""
    loop = trainer.fit_loop
    fetcher = loop._data_fetcher
    return fetcher is not None and bool(loop.epoch_loop._should_check_val_fx(fetcher))
