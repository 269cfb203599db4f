"""Reading webdataset shards on any number of ranks and DataLoader workers.

- `resolve_shards` accepts a shard folder (its `manifest.json` lists the shards and the sample
  count), a manifest file, a brace pattern (`shard-{000000..000099}.tar`), `pipe:` URLs,
  `http(s)://`, `s3://`, ... URLs of shards or of a folder with a manifest, or a list of them.
- `read_samples` opens each shard wherever it is (`sam_train.data.remote`: retries with
  back-off) and counts one that cannot be opened or read as a skipped shard.
- `ShardStream` is the IterableDataset: it splits shards by rank and by worker (or resamples
  them), shuffles samples in a buffer, decodes them, and yields whole batches.
- Resampled mode draws shards with replacement forever and cuts each worker's stream at a fixed
  number of batches computed from the epoch length, so every rank yields exactly the same number
  of batches (a rank that runs out early would hang DDP's all-reduce). Restarted mid-epoch, it
  recomputes and drops the batches already trained, so a resumed run reads what the
  uninterrupted one would have.
- A sample that fails to decode is skipped with a warning naming its key and counted in a
  `SkipCounter` that lives in shared memory, so the training process sees the workers' counts.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from sam_train.data.remote import check_scheme, is_remote, open_shard, read_text, scheme_of
from sam_train.data.resumable import dist_rank_world, replayed_share
from sam_train.data.skipped import SkipCounter, SkipSample

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


# ---------------------------------------------------------------- shard lists and manifests


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of a shard folder (or the manifest file itself), local or a URL; None when
    there is none."""
    text = str(path)
    if is_remote(text):
        if not text.endswith(".json"):
            text = text.rstrip("/") + "/" + MANIFEST
        body = read_text(text)
        return json.loads(body) if body is not None else None
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        return None
    return json.loads(file.read_text())


def _is_url_spec(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec or "{" in spec or "::" in spec


def _folder_manifest(folder: str) -> dict | None:
    """The manifest of the folder holding some shards (None for pipes, or when unreadable)."""
    if folder.startswith("pipe:") or "{" in folder:
        return None
    try:
        return read_manifest(folder or ".")
    except (OSError, ValueError) as err:  # the shards themselves will say what is wrong
        log.warning("no sample count from %s/%s: %s", folder, MANIFEST, err)
        return None


def _known_total(urls: list[str]) -> int | None:
    """Sample count of shards whose folder manifest lists every one of them."""
    counts: dict[str, int] = {}
    for folder in {os.path.dirname(u) for u in urls}:
        for shard in (_folder_manifest(folder) or {}).get("shards", []):
            counts[f"{folder}/{shard['name']}" if folder else shard["name"]] = shard["count"]
    return sum(counts[u] for u in urls) if all(u in counts for u in urls) else None


def _remote_folder(url: str) -> tuple[list[str], int]:
    """The shards a remote folder's (or manifest URL's) manifest lists, and their total."""
    folder = url[: -len(MANIFEST)] if url.endswith(MANIFEST) else url
    folder = folder.rstrip("/")
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(
            f"no {MANIFEST} at {folder}/; give the shards as a pattern "
            f"({folder}/shard-{{000000..000099}}.tar) or serve the folder's manifest"
        )
    return [f"{folder}/{s['name']}" for s in manifest["shards"]], int(manifest["total"])


def resolve_shards(spec: str | Path | Sequence[str | Path]) -> tuple[list[str], int | None]:
    """Shard URLs and the total sample count (None when no manifest says it).

    Raises FileNotFoundError naming the path when nothing is found, RemoteError (a
    ValueError) for a URL scheme with no reader installed.
    """
    if isinstance(spec, (list, tuple)):
        urls = [u for s in spec for u in resolve_shards(s)[0]]
        return urls, _known_total(urls)
    text = os.path.expanduser(str(spec))
    check_scheme(text)
    if is_remote(text) and scheme_of(text) != "pipe" and "{" not in text:
        if not text.endswith(".tar"):  # a folder (or its manifest) on a server
            return _remote_folder(text)
    if _is_url_spec(text):
        urls = wds.shardlists.expand_urls(text)
        return urls, _known_total(urls)
    path = Path(text)
    if path.is_file() and path.suffix == ".json":
        path = path.parent
    if path.is_file():
        return [str(path)], _known_total([str(path)])
    if not path.is_dir():
        raise FileNotFoundError(
            f"shard path {text!r} does not exist; run `sam-prep ...` to create shards there"
        )
    manifest = read_manifest(path)
    if manifest is not None:
        urls = [str(path / s["name"]) for s in manifest["shards"]]
        total = int(manifest["total"])
    else:
        urls, total = sorted(str(p) for p in path.glob("*.tar")), None
        if urls:
            log.warning(
                "%s has no %s; reading its %d .tar files, epoch length unknown",
                path,
                MANIFEST,
                len(urls),
            )
    if not urls:
        raise FileNotFoundError(
            f"no shards in {text!r}; create them with `sam-prep images|coco|sa1b SRC {text}`"
        )
    return urls, total


def decode_image(sample: dict) -> Image.Image:
    """The sample's image (jpg/png/webp bytes) as RGB."""
    for key in IMAGE_KEYS:
        if key in sample:
            with Image.open(io.BytesIO(sample[key])) as img:
                return img.convert("RGB")
    raise KeyError(f"no image ({'/'.join(IMAGE_KEYS)}) in sample with keys {sorted(sample)}")


# ---------------------------------------------------------------- reading and decoding


def opened_shards(urls: Iterable[str], handler: Callable[[BaseException], bool]) -> Iterator[dict]:
    """`{"url", "stream"}` for each shard that opens (local, pipe: or remote, see
    `sam_train.data.remote`); one that does not is handed to `handler` with its URL."""
    for url in urls:
        try:
            stream = open_shard(url)
        except Exception as err:
            err.args = (*err.args, url)
            if not handler(err):
                return
            continue
        yield {"url": url, "stream": stream}


def read_samples(urls: Iterable[str], handler: Callable[[BaseException], bool]) -> Iterator[dict]:
    """Raw samples (`{ext: bytes, "__key__", "__url__"}`) of the shards, in order."""
    files = wds.tariterators.tar_file_expander(opened_shards(urls, handler), handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)


class ShardErrorHandler:
    """webdataset's error handler for shards that cannot be read: count, warn, go on.

    webdataset reports a broken shard first from inside the tar reader (no URL yet), then
    again with the URL appended: it is counted once, at the second report."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, err: BaseException) -> bool:
        if len(err.args) >= 2 and isinstance(err.args[-1], str):
            self.counter.add("shard_error", err.args[-1], err.args[0])
        return True


def decoded(
    samples: Iterable[dict],
    decode: Callable[[dict, random.Random], Any],
    rng: random.Random,
    counter: SkipCounter,
    max_consecutive_skips: int,
) -> Iterator[Any]:
    """`decode(sample, rng)` of each sample; an unusable one is skipped and counted, and a long
    run of them (wrong shards for the stage) stops with a message."""
    consecutive = 0
    for sample in samples:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        try:
            item = decode(sample, rng)
        except SkipSample as skip:
            counter.add(skip.reason, where, skip)
        except Exception as err:  # a corrupt sample must never end the run
            counter.add("corrupt", where, err)
        else:
            consecutive = 0
            yield item
            continue
        consecutive += 1
        if consecutive >= max_consecutive_skips:
            raise RuntimeError(
                f"{consecutive} unusable samples in a row (last: {where}); check the shards"
            )


# ---------------------------------------------------------------- the stream


class ShardStream(IterableDataset):
    """Batches decoded from webdataset shards; use with `DataLoader(stream, batch_size=None)`.

    urls: shard URLs (see `resolve_shards`).
    decode: (raw sample dict, rng) -> item; raise SkipSample for an unusable sample. Must be
        picklable (a module-level class) when DataLoader workers are used.
    collate: list of items -> batch.
    batch_size: items per batch; every batch is full in resampled mode.
    resampled: draw shards with replacement, fixed number of batches per epoch on every rank.
    samples_per_epoch: epoch length (all ranks together) in resampled mode; default the total.
    total: sample count from the manifest, if known.
    shuffle_buffer: sample shuffle buffer size per worker (0 = no sample shuffling).
    shuffle_shards: shuffle the shard order each epoch (non-resampled mode).
    same_every_epoch: every iteration decodes the same way (validation: the same mask subsets
        and orders each epoch, and in `sam-eval`, so figures are comparable across epochs).
    rank, world_size: this process's place; default from torch.distributed or the env.
    num_workers: the DataLoader's worker count (for `len`; each worker yields its own batches).
    counter: where skipped samples are counted (a new one by default).
    """

    def __init__(
        self,
        urls: Sequence[str],
        decode: Callable[[dict, random.Random], Any],
        collate: Callable[[list], Any],
        batch_size: int,
        *,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        total: int | None = None,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        same_every_epoch: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        counter: SkipCounter | None = None,
        max_consecutive_skips: int = 1000,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ShardStream needs at least one shard")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.urls, self.decode, self.collate = list(urls), decode, collate
        self.batch_size, self.resampled, self.drop_last = batch_size, resampled, drop_last
        self.samples_per_epoch = samples_per_epoch or total
        if resampled and not self.samples_per_epoch:
            raise ValueError(
                "resampled shards need an epoch length: no manifest gives the total, set samples_per_epoch"
            )
        self.shuffle_buffer, self.shuffle_shards, self.seed = shuffle_buffer, shuffle_shards, seed
        self.same_every_epoch = same_every_epoch
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_workers = num_workers
        self.counter = counter if counter is not None else SkipCounter()
        self.max_consecutive_skips = max_consecutive_skips
        self.epoch = -1
        self.resumed: tuple[int, int] | None = None  # (epoch, batches of it already trained)

    def set_epoch(self, epoch: int) -> None:
        """Seed the next iteration with this epoch (the next `iter` uses exactly `epoch`)."""
        self.epoch = epoch - 1

    def resume(self, epoch: int, batches_done: int = 0) -> None:
        """Continue a restarted run: the next `iter` is `epoch` (a fresh process would start
        again at 0) with its first `batches_done` batches (all workers together) already
        trained. A resampled stream recomputes and drops them (each worker decodes again its
        share of them), so the rest of the epoch is exactly the uninterrupted run's; a
        checkpoint taken after an epoch's last batch goes on with the next epoch. A stream
        that reads each shard once (no fixed batch count per worker) finishes the epoch with
        draws reseeded by that count instead. Epochs after it are seeded as in an
        uninterrupted run."""
        if self.resampled and batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self.resumed = (epoch, batches_done) if batches_done > 0 else None

    def batches_per_worker(self) -> int:
        """Resampled mode: batches each worker yields, the same on every rank."""
        per_batch = self.world_size * max(1, self.num_workers) * self.batch_size
        return max(1, math.ceil(self.samples_per_epoch / per_batch))

    def __len__(self) -> int:
        if not self.resampled:
            raise TypeError("a non-resampled ShardStream has no exact per-rank length")
        return self.batches_per_worker() * max(1, self.num_workers)

    def __iter__(self) -> Iterator[Any]:
        self.epoch += 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        done, resumed = 0, self.resumed is not None and self.resumed[0] == self.epoch
        if resumed and self.resampled:
            worker, done = replayed_share(worker, workers, self.resumed[1])
        key = f"{self.seed}/{0 if self.same_every_epoch else self.epoch}/{self.rank}/{worker}"
        if resumed and not self.resampled:
            key += f"/resumed-after-{self.resumed[1]}"
        rng = random.Random(key)
        if self.resampled:
            urls: Iterable[str] = self._resampled_urls(rng)
        else:
            urls = self._split_urls(worker, workers)
        samples = read_samples(urls, handler=ShardErrorHandler(self.counter))
        if self.shuffle_buffer > 1:
            initial = min(self.shuffle_buffer, 100)
            samples = wds.filters.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)
        batches = self._batches(
            decoded(samples, self.decode, rng, self.counter, self.max_consecutive_skips)
        )
        if self.resampled:
            batches = islice(batches, done, self.batches_per_worker())
        yield from batches

    def _resampled_urls(self, rng: random.Random) -> Iterator[str]:
        while True:
            yield rng.choice(self.urls)

    def _split_urls(self, worker: int, workers: int) -> list[str]:
        """Shuffle identically on every rank (seed and epoch only), then take this rank's and
        this worker's share: the shares partition the shards."""
        urls = self.urls[:]
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
        if self.world_size > 1:
            if len(urls) < self.world_size:
                log.warning(
                    "%d shards < %d ranks: every rank reads all shards", len(urls), self.world_size
                )
            else:
                urls = urls[self.rank :: self.world_size]
        return urls[worker::workers]

    def _batches(self, items: Iterable[Any]) -> Iterator[Any]:
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch and not self.drop_last and not self.resampled:
            yield self.collate(batch)
