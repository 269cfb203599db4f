"""Callbacks that tests inject into `sam-train` subprocesses (PYTHONPATH=tests)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch


class SigkillAtStep(L.Callback):
    """Kill the training process with SIGKILL, mid-epoch, once `step` optimiser steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpRankWeights(L.Callback):
    """Each rank writes its final weights and the training batches it saw to `dirpath`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.detach().cpu().clone())

    def on_fit_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"state": pl_module.model.state_dict(), "batches": self.batches},
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )


class SigkillAtEpochStart(L.Callback):
    """Kill the training process with SIGKILL when epoch `epoch` starts: the epoch before it,
    its validation and its end-of-epoch checkpoint are done."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class SigkillInValidation(L.Callback):
    """Kill the training process with SIGKILL inside the validation of epoch `epoch` (not the
    sanity check), after `batches` of its batches."""

    def __init__(self, epoch: int, batches: int = 0) -> None:
        self.epoch, self.batches = epoch, batches

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or trainer.current_epoch < self.epoch:
            return
        if batch_idx >= self.batches:
            os.kill(os.getpid(), signal.SIGKILL)


def cpu_ddp_dumping_weights(run_dir, dump) -> list[str]:
    """`sam-train` overrides for one epoch of two-process DDP on CPU in `run_dir`, each rank
    writing its final weights to `dump`/rank<N>.pt (DumpRankWeights)."""
    return [
        "trainer.max_epochs=1",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        f"hydra.run.dir={run_dir}",
        "+callbacks.dump._target_=run_helpers.DumpRankWeights",
        f"+callbacks.dump.dirpath={dump}",
    ]
