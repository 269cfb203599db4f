"""Loader settings that follow the machine: no more worker processes than spare cores, and
page-locked memory only when there is a CUDA device to copy to."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fit_workers(requested: int, cpus: int | None = None) -> int:
    """`requested` loader workers, at most one per core beyond the training process's own:
    on a 2-core machine 8 workers would only fight the training loop for the CPU."""
    cpus = available_cpus() if cpus is None else cpus
    workers = max(0, min(int(requested), cpus - 1))
    if workers < requested:
        log.info(
            "data.num_workers=%d on a machine with %d cores: using %d", requested, cpus, workers
        )
    return workers


def fit_pin_memory(requested: bool) -> bool:
    """Page-locked batches help host-to-GPU copies only; without CUDA they just cost memory."""
    return bool(requested) and torch.cuda.is_available()
