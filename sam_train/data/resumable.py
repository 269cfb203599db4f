"""Data order and augmentation as functions of (seed, epoch, position), so a run killed
mid-epoch resumes exactly where it stopped.

`ResumableSampler` shuffles with a generator seeded by (seed, epoch), gives each rank an equal,
disjoint share (padding by repetition so no rank waits on another), and yields
`(index, sample_seed)`; datasets seed their random augmentation with `sample_seed`.
`ResumableDataLoader` counts the batches it has handed out; Lightning stores that count in
every checkpoint (it saves the state of loaders that have `state_dict`) and the next run skips
them without decoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from sam_train.seeding import sample_seed


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else the launcher's
    environment (torchrun and Lightning set RANK / WORLD_SIZE), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def seeded(seed: int | None):
    """Run a block with torch's global CPU generator seeded (restored afterwards); no-op for
    None. Only the CPU generator: transforms draw from it, and `torch.manual_seed` would also
    queue a CUDA seeding (with a stack trace) on every call, a third of a millisecond each."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def replayed_share(worker: int, workers: int, batches_done: int) -> tuple[int, int]:
    """(the worker whose stream this one plays, batches of it to drop) for an iterable stream
    restarted `batches_done` batches into an epoch. A DataLoader takes batch i from worker
    i % workers and starts again at worker 0, so worker w plays worker (w + done) % workers
    and drops that worker's share of the first `batches_done` batches."""
    plays = (worker + batches_done) % workers
    return plays, len(range(plays, batches_done, workers))


def split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """A dataset key is an index, or (index, sample_seed) from `ResumableSampler`."""
    return (key[0], key[1]) if isinstance(key, tuple) else (key, None)


class ResumableSampler(Sampler):
    """Per-rank share of a (seed, epoch)-shuffled order, yielding (index, sample_seed)."""

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """The next iteration starts `n` samples into this rank's share."""
        self._skip = n

    def per_rank(self) -> int:
        return math.ceil(self.num_samples / dist_rank_world()[1])

    def __len__(self) -> int:
        return self.per_rank()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = dist_rank_world()
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank() * world
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        mine = order[rank:total:world][self._skip :]
        self._skip = 0
        for i in mine:
            yield (i, sample_seed(self.seed, self.epoch, i))


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` whose position survives a checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs sampler=ResumableSampler(...)")
        self._served = 0
        self._start = 0
        self._start_epoch = -1

    @property
    def resumable_sampler(self) -> ResumableSampler:
        return self.batch_sampler.sampler

    def __iter__(self):
        resuming = self._start_epoch == self.resumable_sampler.epoch
        self._served = self._start if resuming else 0
        self._start, self._start_epoch = 0, -1
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.resumable_sampler.epoch, "batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.resumable_sampler
        sampler.set_epoch(state["epoch"])
        sampler.skip_next(state["batches_served"] * self.batch_size)
        self._start, self._start_epoch = state["batches_served"], state["epoch"]
