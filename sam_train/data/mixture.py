"""Training samples drawn from several shard sources by weight.

Each sample first picks a source with the given probabilities, then takes the next sample of
that source's own stream: its shards split among the reading streams (ranks x workers),
repeated and shuffled on their own. Everything random is a function of (seed, epoch, rank,
worker), so:
- a source's share per stream is fixed for the epoch and disjoint from every other stream's
  (shards split between streams; a source with fewer shards than streams splits its samples
  instead), so two ranks or workers never read the same sample in a step;
- a restarted run replays the consumed part of its epoch inside the workers and discards it,
  so it continues with exactly the batches the uninterrupted run would have made (at the cost
  of decoding, once, at most one epoch's share per worker);
- every stream yields the same number of batches (no DDP hang).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import PurePosixPath
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from sam_train.data.resumable import dist_rank_world, replayed_share
from sam_train.data.shards import ShardErrorHandler, decoded, read_samples, resolve_shards
from sam_train.data.skipped import SkipCounter
from sam_train.errors import UserError

log = logging.getLogger(__name__)

SOURCE_KEY = "__source__"  # the raw sample's source name (set before decoding)


class MixtureError(UserError):
    """A mixture that cannot be read (bad weight, missing or empty source); one line."""


@dataclass(frozen=True)
class Source:
    """One dataset of a mixture, as written in the config.

    name: how logs call it (`val/<name>/...`); default the last folder name of `path`.
    path: what `resolve_shards` reads (folder, manifest, brace pattern, URL or list).
    weight: relative probability of drawing a training sample from it (> 0).
    val_path: its validation shards (optional), reported as `val/<name>/...`.
    """

    name: str
    path: str | list[str]
    weight: float
    val_path: str | list[str] | None = None


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its shard URLs and sample count (None when no manifest says it)."""

    name: str
    urls: tuple[str, ...]
    weight: float
    total: int | None


def default_name(path: str | list[str]) -> str:
    """`/data/sa1b/` -> `sa1b`; `https://h/coco/shard-{0..9}.tar` -> `coco`."""
    first = str(path[0] if isinstance(path, (list, tuple)) else path).rstrip("/")
    if first.startswith("pipe:"):
        first = next((w for w in first.split() if "/" in w), first)
    first = first.split("://", 1)[-1]
    parts = PurePosixPath(first).parts
    if parts and (parts[-1].endswith((".tar", ".json")) or "{" in parts[-1]):
        parts = parts[:-1]
    return parts[-1] if parts else first


def _plain(path: Any) -> str | list[str] | None:
    """A path, or a list of them (a config's ListConfig as a plain list)."""
    if path is None or isinstance(path, str):
        return path
    if isinstance(path, Sequence):
        return [str(p) for p in path]
    return str(path)


def parse_sources(sources: Sequence[Mapping[str, Any]] | None) -> list[Source]:
    """Config entries (`{path: ..., weight: ..., name: ..., val_path: ...}`) as `Source`s;
    MixtureError, naming the source, for a bad weight, an unknown key or a repeated name."""
    if not sources:
        raise MixtureError(
            "data.sources is empty; give it a list like "
            "'[{path: /data/a, weight: 0.7}, {path: /data/b, weight: 0.3}]'"
        )
    out: list[Source] = []
    for i, entry in enumerate(sources):
        entry = dict(entry)
        if entry.get("path") is None:
            raise MixtureError(f"data.sources[{i}] has no path; add path: /shard/folder")
        name = str(entry.pop("name", None) or default_name(entry["path"]))
        unknown = set(entry) - {"path", "weight", "val_path"}
        if unknown:
            raise MixtureError(
                f"source {name!r} has unknown keys {sorted(unknown)}; "
                "a source takes path, weight, name, val_path"
            )
        try:
            weight = float(entry.get("weight", 1.0))
        except (TypeError, ValueError):
            raise MixtureError(
                f"source {name!r} has weight {entry['weight']!r}; give a number"
            ) from None
        if not math.isfinite(weight) or weight < 0:
            raise MixtureError(f"source {name!r} has weight {weight}; weights must be >= 0")
        if weight == 0:
            raise MixtureError(
                f"source {name!r} has weight 0: it would never be drawn; "
                "remove it from data.sources or give it a positive weight"
            )
        if any(s.name == name for s in out):
            raise MixtureError(
                f"two sources are called {name!r}; give one of them its own name: (name: other)"
            )
        out.append(Source(name, _plain(entry["path"]), weight, _plain(entry.get("val_path"))))
    return out


def resolve_source(source: Source, split: str = "train") -> ResolvedSource:
    """Its shard URLs and count; MixtureError naming the source when it is missing or empty."""
    path = source.path if split == "train" else source.val_path
    try:
        urls, total = resolve_shards(path)
    except FileNotFoundError as err:
        raise MixtureError(f"source {source.name!r} ({split}): {err}") from None
    if total == 0 or not urls:
        raise MixtureError(
            f"source {source.name!r} ({split}) has no samples in {path}; "
            "convert data into it with `sam-prep` or remove it from data.sources"
        )
    return ResolvedSource(source.name, tuple(urls), source.weight, total)


def check_stage_keys(source: ResolvedSource, keys: Sequence[str], stage: str) -> None:
    """Refuse a source whose first sample lacks every one of `keys` (e.g. image-only shards in
    a stage-2 mixture): each of its samples would be skipped."""
    for sample in read_samples(source.urls[:1], handler=wds.handlers.ignore_and_continue):
        if not any(k in sample for k in keys):
            raise MixtureError(
                f"source {source.name!r} has no samples for stage={stage}: its samples hold "
                f"{sorted(k for k in sample if not k.startswith('__'))}, stage {stage} needs "
                f"{' or '.join(keys)}; convert it with the stage's `sam-prep` command"
            )
        return


# ---------------------------------------------------------------- drawing


def cumulative(weights: Sequence[float]) -> list[float]:
    """Normalised cumulative weights (last entry exactly 1)."""
    total = float(sum(weights))
    acc = list(itertools.accumulate(w / total for w in weights))
    acc[-1] = 1.0
    return acc


def draw_source(cum: Sequence[float], rng: random.Random) -> int:
    """Index of the source a sample is drawn from: P(i) = weight_i / sum(weights)."""
    return bisect.bisect_right(cum, rng.random())


def stream_share(
    urls: Sequence[str], slot: int, slots: int, order_seed: str
) -> tuple[list[str], int, int]:
    """This stream's part of a source: (shards, keep every `step`-th sample, from `offset`).

    The shard order is shuffled the same way for every stream (seed, epoch, source), then
    split: whole shards when there are at least as many as streams, else every stream reads
    all shards and keeps every `slots`-th sample, starting at its own slot.
    """
    urls = list(urls)
    random.Random(order_seed).shuffle(urls)
    if len(urls) >= slots:
        return urls[slot::slots], 1, 0
    return urls, slots, slot


class MixtureStream(IterableDataset):
    """Batches of samples drawn from weighted sources; `DataLoader(stream, batch_size=None)`.

    sources: the resolved sources (weights need not sum to 1).
    decode, collate, batch_size: as in `ShardStream` (decode sees `sample["__source__"]`).
    samples_per_epoch: samples per epoch, all ranks together (an epoch is a length, not a
        pass: sources repeat on their own).
    shuffle_buffer: samples per source per stream in the shuffle buffer.
    seed, rank, world_size, num_workers, counter: as in `ShardStream`.
    """

    def __init__(
        self,
        sources: Sequence[ResolvedSource],
        decode: Callable[[dict, random.Random], Any],
        collate: Callable[[list], Any],
        batch_size: int,
        samples_per_epoch: int,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        counter: SkipCounter | None = None,
        max_consecutive_skips: int = 1000,
    ) -> None:
        super().__init__()
        if not sources:
            raise MixtureError("a mixture needs at least one source")
        if batch_size < 1 or samples_per_epoch < 1:
            raise ValueError("batch_size and samples_per_epoch must be at least 1")
        self.sources = list(sources)
        self.cum = cumulative([s.weight for s in self.sources])
        self.decode, self.collate, self.batch_size = decode, collate, batch_size
        self.samples_per_epoch, self.shuffle_buffer, self.seed = (
            samples_per_epoch,
            shuffle_buffer,
            seed,
        )
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_workers = num_workers
        self.counter = counter if counter is not None else SkipCounter()
        self.max_consecutive_skips = max_consecutive_skips
        self.epoch = -1
        self.resumed: tuple[int, int] | None = None
        self._check_sizes()

    def _check_sizes(self) -> None:
        slots = self.world_size * max(1, self.num_workers)
        for s in self.sources:
            if s.total is not None and s.total < slots:
                raise MixtureError(
                    f"source {s.name!r} has {s.total} samples, fewer than the {slots} reading "
                    "streams (ranks x data.num_workers): give it more samples or fewer workers"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch - 1

    def resume(self, epoch: int, batches_done: int = 0) -> None:
        """The next `iter` is `epoch` with its first `batches_done` batches (all workers
        together) already trained: they are recomputed and dropped, so the rest of the epoch
        is exactly the uninterrupted run's."""
        if batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self.resumed = (epoch, batches_done) if batches_done > 0 else None

    def batches_per_worker(self) -> int:
        per_batch = self.world_size * max(1, self.num_workers) * self.batch_size
        return max(1, math.ceil(self.samples_per_epoch / per_batch))

    def __len__(self) -> int:
        return self.batches_per_worker() * max(1, self.num_workers)

    def __iter__(self) -> Iterator[Any]:
        self.epoch += 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        done = 0
        if self.resumed is not None and self.resumed[0] == self.epoch:
            worker, done = replayed_share(worker, workers, self.resumed[1])
        slot, slots = self.rank * workers + worker, self.world_size * workers
        key = f"{self.seed}/{self.epoch}/{self.rank}/{worker}"
        streams = [self._source_samples(s, slot, slots, key) for s in self.sources]
        batches = self._batches(
            decoded(
                self._drawn(streams, key),
                self.decode,
                random.Random(key),
                self.counter,
                self.max_consecutive_skips,
            )
        )
        yield from islice(batches, done, self.batches_per_worker())

    def _drawn(self, streams: list[Iterator[dict]], key: str) -> Iterator[dict]:
        rng = random.Random(f"{key}/choice")
        while True:
            yield next(streams[draw_source(self.cum, rng)])

    def _source_samples(
        self, source: ResolvedSource, slot: int, slots: int, key: str
    ) -> Iterator[dict]:
        """This stream's share of `source`, repeated and shuffled forever."""
        order_seed = f"{self.seed}/{self.epoch}/{source.name}/order"
        urls, step, offset = stream_share(source.urls, slot, slots, order_seed)
        rng = random.Random(f"{key}/{source.name}")
        samples: Iterable[dict] = self._repeated(source.name, urls, step, offset, rng)
        if self.shuffle_buffer > 1:
            initial = min(self.shuffle_buffer, 100)
            samples = wds.filters.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)
        return iter(samples)

    def _repeated(
        self, name: str, urls: list[str], step: int, offset: int, rng: random.Random
    ) -> Iterator[dict]:
        for npass in itertools.count():
            order = urls[:]
            if step == 1:  # a whole-shard share: reshuffle it each pass
                rng.shuffle(order)
            got = 0
            samples = read_samples(order, handler=ShardErrorHandler(self.counter))
            for i, sample in enumerate(samples):
                if i % step == offset:
                    sample[SOURCE_KEY] = name
                    got += 1
                    yield sample
            if got == 0:
                raise MixtureError(
                    f"source {name!r}: pass {npass} over its shards {urls[:3]}... gave no "
                    "samples (all unreadable?); check them with `sam-prep inspect`"
                )

    def _batches(self, items: Iterable[Any]) -> Iterator[Any]:
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
