"""LightningDataModules over webdataset shards, for both stages, picked by `data=...` configs.

Training streams are resampled by default (same batch count on every rank: no DDP hang);
validation streams read each shard once, split by rank. Skipped samples are counted in
`datamodule.skip_counter`; `sam_train.lit.callbacks.SkippedSamplesLogger` logs them as
`data/skipped`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA
from sam_train.data.machine import fit_pin_memory, fit_workers
from sam_train.data.resumable import seeded
from sam_train.data.sam_samples import SamSamplePrep, collate_sam
from sam_train.data.shards import ShardStream, decode_image, resolve_shards
from sam_train.data.skipped import SkipCounter
from sam_train.data.transforms import MaeEvalTransform, MaeTrainTransform
from sam_train.lit.progress import epoch_position


class MaeDecode:
    """Shard sample -> transformed image tensor [3, S, S] (picklable for workers). The random
    crop and flip are drawn from the stream's `rng` (torchvision draws from torch's global
    generator, seeded here for the one sample), so augmentation replays on resume."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, sample: dict, rng: random.Random) -> torch.Tensor:
        img: Image.Image = decode_image(sample)
        with seeded(rng.getrandbits(63)):
            return self.transform(img)


def stack_images(items: list[torch.Tensor]) -> torch.Tensor:
    """[3, S, S] x B -> [B, 3, S, S], in shared memory inside a worker (no second copy)."""
    out = torch.empty(len(items), *items[0].shape, dtype=items[0].dtype)
    if get_worker_info() is not None:
        out.share_memory_()
    return torch.stack(items, out=out)


class ShardDataModule(L.LightningDataModule):
    """Shared loader plumbing; subclasses say how a sample is decoded and batched.

    path / val_path: shard folder, manifest, brace pattern, `pipe:` URL or a list of them.
    batch_size: per rank. num_workers, pin_memory: DataLoader settings, fitted to the machine
        (at most one worker per spare core; pinned memory only with CUDA).
    resampled: training shards drawn with replacement, `samples_per_epoch` per epoch (all ranks
        together; default the manifest total), identical batch counts on every rank.
    shuffle_buffer: samples per worker shuffle buffer (raw bytes are buffered: keep it small
        for SA-1B, whose json files are large).
    seed: shard and sample order (combined with epoch, rank and worker).
    """

    def __init__(
        self,
        path: str | list[str],
        val_path: str | list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 4,
        pin_memory: bool = True,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if path is None:
            raise ValueError("data.path is required: a shard folder made with `sam-prep`")
        self.path, self.val_path = path, val_path
        self.batch_size = batch_size
        self.num_workers, self.pin_memory = fit_workers(num_workers), fit_pin_memory(pin_memory)
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.skip_counter = SkipCounter()
        self._restored: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def decoder(self, train: bool):
        raise NotImplementedError

    def collate(self, items: list):
        raise NotImplementedError

    def _rank_world(self) -> tuple[int | None, int | None]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (None, None)

    def stream(self, spec, train: bool) -> ShardStream:
        """The ShardStream this module's loaders read (also handy outside Lightning)."""
        urls, total = resolve_shards(spec)
        rank, world = self._rank_world()
        return ShardStream(
            urls,
            self.decoder(train),
            self.collate,
            self.batch_size,
            resampled=train and self.resampled,
            samples_per_epoch=self.samples_per_epoch if train else None,
            total=total,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            shuffle_shards=train,
            same_every_epoch=not train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            counter=self.skip_counter,
        )

    def _loader(self, stream) -> DataLoader:
        return DataLoader(
            stream,
            batch_size=None,  # the stream batches inside each worker
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,  # workers keep their epoch counter
        )

    def train_stream(self) -> ShardStream:
        """The training stream (a subclass may read several sources)."""
        return self.stream(self.path, train=True)

    def train_dataloader(self) -> DataLoader:
        stream = self.train_stream()
        position = self._restored or epoch_position(getattr(self, "trainer", None))
        self._restored = None
        stream.resume(*position)
        return self._loader(stream)

    # Where training stands goes into checkpoints through the datamodule: Lightning builds the
    # training loader, and starts its workers, for the optimiser set-up
    # (estimated_stepping_batches) before it restores the loop counters, but restores the
    # datamodule before that.
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        epoch, batches_done = epoch_position(trainer)
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self._restored = (int(state["epoch"]), int(state["batches_done"]))

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.stream(self.val_path, train=False)) if self.val_path else []


class ShardMaeDataModule(ShardDataModule):
    """Stage 1 from image shards: batches [B, 3, S, S] (MAE crops for training, centre crops
    for validation).

    img_size: S. crop_scale: RandomResizedCrop area range. hflip: random horizontal flip.
    """

    feeds_stage: ClassVar[str] = "mae"  # the stage whose batches it makes (config_checks)

    def __init__(
        self,
        path: str | list[str],
        img_size: int,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(path, **kwargs)
        self.img_size, self.crop_scale, self.hflip = img_size, tuple(crop_scale), hflip

    def decoder(self, train: bool) -> MaeDecode:
        if train:
            return MaeDecode(MaeTrainTransform(self.img_size, self.crop_scale, self.hflip))
        return MaeDecode(MaeEvalTransform(self.img_size))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return stack_images(items)


class ShardSamDataModule(ShardDataModule):
    """Stage 2 from image + RLE-json shards (COCO, SA-1B, the sample): `SamBatch`es.

    img_size: side S of the padded square. max_masks: masks per image at most.
    min_mask_area: pixels (after resizing) a mask needs. max_mask_fraction: larger masks dropped.
    hflip: random horizontal flip of training images (masks and boxes follow).
    pixel_norm: the model's pixel normalisation (`Sam.pixel_norm`; stage sam passes the model's).
    """

    feeds_stage: ClassVar[str] = "sam"  # the stage whose batches it makes (config_checks)

    def __init__(
        self,
        path: str | list[str],
        img_size: int,
        max_masks: int = 64,
        min_mask_area: int = MIN_MASK_AREA,
        max_mask_fraction: float = MAX_MASK_FRACTION,
        hflip: bool = True,
        pixel_norm: str = "imagenet",
        **kwargs,
    ) -> None:
        super().__init__(path, **kwargs)
        self.img_size, self.max_masks, self.hflip = img_size, max_masks, hflip
        self.pixel_norm = pixel_norm
        self.min_mask_area, self.max_mask_fraction = min_mask_area, max_mask_fraction

    def decoder(self, train: bool) -> SamSamplePrep:
        return SamSamplePrep(
            self.img_size,
            self.max_masks,
            self.min_mask_area,
            self.max_mask_fraction,
            hflip=train and self.hflip,
            pixel_norm=self.pixel_norm,
        )

    def collate(self, items: list):
        return collate_sam(items)


class SampleSamDataModule(ShardSamDataModule):
    """Stage 2 on the embedded sample dataset: `build(sample_dir, variants=...)` makes its
    shards under `sample_dir` on first use (atomically; safe when several processes race;
    conf/data/sam_sample.yaml passes `data_prep.sample.ensure_sample_shards`), then it reads
    `sample_dir/sam/{train,val}`. `variants` composites per photo: more give more training
    images, the same validation set (give each count its own `sample_dir`). The folder is
    named `sample_dir`, not `path`, so that `data.path=MY_SHARDS` without `data=shards_sam`
    is refused instead of building the sample there."""

    def __init__(
        self,
        sample_dir: str,
        img_size: int,
        build: Callable[..., object] | None = None,
        variants: int = 2,
        **kwargs,
    ) -> None:
        root = Path(sample_dir).expanduser()
        if kwargs.get("val_path") is None:  # the sample's own validation split
            kwargs["val_path"] = str(root / "sam" / "val")
        super().__init__(str(root / "sam" / "train"), img_size, **kwargs)
        self.root, self.build, self.variants = str(root), build, variants

    def prepare_data(self) -> None:
        if self.build is not None:
            self.build(self.root, variants=self.variants)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # no-op once built; covers nodes without a shared filesystem
