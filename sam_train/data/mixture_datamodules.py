"""LightningDataModules reading a weighted mixture of shard sources, for both stages
(conf/data/mix.yaml for stage 2, conf/data/mix_mae.yaml for stage 1).

Training draws each sample from a source with the given probabilities (`MixtureStream`);
validation reads each source's `val_path` as its own loader, so the stage modules report
`val/<source>/...` beside the overall `val/...` (they read the names from `val_source_names`).
Every source is checked when the module is built: a bad weight, a missing or empty source, or
shards without what the stage needs are refused in one line naming the source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch.utils.data import DataLoader

from sam_train.data.mixture import (
    MixtureError,
    MixtureStream,
    ResolvedSource,
    check_stage_keys,
    parse_sources,
    resolve_source,
)
from sam_train.data.shard_datamodules import ShardMaeDataModule, ShardSamDataModule
from sam_train.data.shards import IMAGE_KEYS


class MixtureLoaders:
    """Loaders of a mixture, on top of a `ShardDataModule` subclass (its decoder and collate).

    sources: `[{path, weight, name?, val_path?}, ...]` (see `sam_train.data.mixture.Source`).
    samples_per_epoch: samples per epoch, all ranks together; default the sum of the sources'
        manifest totals.
    """

    needs_keys: ClassVar[tuple[str, ...]] = IMAGE_KEYS  # a sample of the stage has one of these

    def _init_mixture(self, sources: Sequence[Mapping[str, Any]]) -> list[str]:
        """Parse and check the sources; returns their training paths (for the base class)."""
        self.sources = parse_sources(sources)
        self.train_sources = [resolve_source(s, "train") for s in self.sources]
        self.val_sources = [resolve_source(s, "val") for s in self.sources if s.val_path]
        stage = self.feeds_stage
        for src in self.train_sources + self.val_sources:
            check_stage_keys(src, self.needs_keys, stage)
        return [p for s in self.sources for p in _as_list(s.path)]

    @property
    def val_source_names(self) -> list[str]:
        """The names of the validation loaders, in order (`val/<name>/...`)."""
        return [s.name for s in self.val_sources]

    def train_stream(self) -> MixtureStream:
        per_epoch = self.samples_per_epoch or _known_sum(self.train_sources)
        if not per_epoch:
            raise MixtureError("no manifest gives the sources' sizes; set data.samples_per_epoch")
        rank, world = self._rank_world()
        return MixtureStream(
            self.train_sources,
            self.decoder(train=True),
            self.collate,
            self.batch_size,
            per_epoch,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            counter=self.skip_counter,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.stream(list(s.urls), train=False)) for s in self.val_sources]


def _as_list(path: str | Sequence[str]) -> list[str]:
    return [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]


def _known_sum(sources: Sequence[ResolvedSource]) -> int | None:
    totals = [s.total for s in sources]
    return sum(totals) if all(t is not None for t in totals) else None


def _no_val_path(kwargs: dict) -> None:
    """Refuse the single-source options a mixture does not read."""
    if kwargs.pop("val_path", None) is not None:
        raise MixtureError(
            "data.val_path is not read by a mixture; give each source its own val_path"
        )
    if kwargs.get("resampled") is False:
        raise MixtureError(
            "data.resampled=false: a mixture always draws with replacement; "
            "set data.samples_per_epoch for the epoch length"
        )


class MixtureMaeDataModule(MixtureLoaders, ShardMaeDataModule):
    """Stage 1 from a weighted mixture of image shard folders (conf/data/mix_mae.yaml)."""

    feeds_stage: ClassVar[str] = "mae"

    def __init__(self, sources: list, img_size: int, **kwargs) -> None:
        _no_val_path(kwargs)
        super().__init__(self._init_mixture(sources), img_size, **kwargs)


class MixtureSamDataModule(MixtureLoaders, ShardSamDataModule):
    """Stage 2 from a weighted mixture of image + mask shard folders (conf/data/mix.yaml)."""

    feeds_stage: ClassVar[str] = "sam"
    needs_keys: ClassVar[tuple[str, ...]] = ("json",)

    def __init__(self, sources: list, img_size: int, **kwargs) -> None:
        _no_val_path(kwargs)
        super().__init__(self._init_mixture(sources), img_size, **kwargs)
