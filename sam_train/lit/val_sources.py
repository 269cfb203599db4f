"""Validation on several sources (a data mixture): each validation loader is one source, and
the stage modules report `val/<source>/<metric>` beside the overall `val/<metric>`."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch


def val_source_names(trainer: L.Trainer | None) -> list[str]:
    """The names of the validation loaders when the data module has them (a mixture), in
    loader order; [] for one unnamed validation set."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return list(getattr(datamodule, "val_source_names", None) or [])


class SourceMeans:
    """Sample-weighted means of one scalar per source and overall, summed over ranks.

    n_sources: validation loaders. add(source, value, n): `value` is the mean over `n` samples.
    """

    def __init__(self, n_sources: int) -> None:
        self.sums = torch.zeros(n_sources, 2, dtype=torch.float64)  # [S, (value * n, n)]

    def add(self, source: int, value: torch.Tensor, n: int) -> None:
        self.sums[source] += torch.tensor([float(value.detach()) * n, n], dtype=torch.float64)

    def compute(
        self, names: list[str], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[dict[str, float], float | None]:
        """({source name: mean}, overall mean) over every rank (every rank must call it)."""
        sums = reduce(self.sums.flatten()).reshape(-1, 2).cpu() if reduce else self.sums
        per_source = {name: s / n for name, (s, n) in zip(names, sums.tolist()) if n > 0}
        total, count = sums.sum(0).tolist()
        return per_source, (total / count if count > 0 else None)
