"""Stage-1 LightningDataModule over map-style datasets, and the factories the configs call."""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

import lightning as L
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from sam_train.data.image_datasets import ImageFolderDataset, PhotoCropsDataset, list_images
from sam_train.data.machine import fit_pin_memory, fit_workers
from sam_train.data.resumable import ResumableDataLoader, ResumableSampler
from sam_train.data.sample_images import DEFAULT_VAL_PHOTOS, load_sample_photos
from sam_train.data.skipped import SkipCounter
from sam_train.data.transforms import MaeEvalTransform, MaeTrainTransform


class MaeDataModule(L.LightningDataModule):
    """Batches of normalised images [B, 3, S, S] from a train and a validation dataset.

    Training order and augmentation follow (seed, epoch, position), and each rank reads its
    own equal share, so runs are reproducible and resume exactly mid-epoch (see
    `sam_train.data.resumable`); trainers run with `use_distributed_sampler=False`.
    """

    feeds_stage: ClassVar[str] = "mae"  # the stage whose batches it makes (config_checks)

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset | None,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        skip_counter: SkipCounter | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        self.train_set, self.val_set = train_set, val_set
        self.batch_size = batch_size
        self.num_workers = fit_workers(num_workers)  # at most one per spare core
        self.pin_memory = fit_pin_memory(pin_memory)  # only with CUDA
        self.seed = seed
        # what the datasets skipped (unreadable files), logged as data/skipped
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self._train_loader: ResumableDataLoader | None = None
        self._pending_loader_state: dict | None = None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(len(dataset), shuffle=shuffle, seed=self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(dataset) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._train_loader = self._loader(self.train_set, shuffle=True)
        if self._pending_loader_state is not None:
            self._train_loader.load_state_dict(self._pending_loader_state)
        return self._train_loader

    # The loader position goes into checkpoints through the datamodule: Lightning restores
    # loader states only when it builds the loader after the restore, and the optimiser set-up
    # (estimated_stepping_batches) builds it before.
    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state: dict) -> None:
        self._pending_loader_state = state.get("train_loader")
        if self._train_loader is not None and self._pending_loader_state is not None:
            self._train_loader.load_state_dict(self._pending_loader_state)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        # every rank sees the whole (small) validation set; metrics are synced anyway
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC)


def sample_datamodule(
    img_size: int,
    batch_size: int = 16,
    samples_per_epoch: int = 256,
    val_photos: list[str] | tuple[str, ...] = DEFAULT_VAL_PHOTOS,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> MaeDataModule:
    """The embedded sample photos: random crops of the training photos; the held-out photos,
    centre-cropped, for validation."""
    # photos up to 1411 px: shrink once so per-crop resizing stays cheap (crops keep >= 2x detail)
    photos = {name: _shrink(im, 2 * img_size) for name, im in load_sample_photos().items()}
    unknown = set(val_photos) - set(photos)
    if unknown:
        raise ValueError(
            f"data.val_photos names unknown photos {sorted(unknown)}; have {sorted(photos)}"
        )
    # training photos as uint8 tensors [3, H, W], converted once: crops are cut and resized
    # with torch ops, no PIL image per sample (validation keeps PIL: two fixed views)
    train = [pil_to_tensor(im) for name, im in photos.items() if name not in val_photos]
    val = [photos[name] for name in val_photos]
    return MaeDataModule(
        PhotoCropsDataset(train, MaeTrainTransform(img_size, crop_scale), samples_per_epoch),
        PhotoCropsDataset(val, MaeEvalTransform(img_size), len(val)) if val else None,
        batch_size,
        num_workers,
        pin_memory,
        seed,
    )


def image_folder_datamodule(
    root: str | None,
    img_size: int,
    batch_size: int = 64,
    val_fraction: float = 0.01,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    num_workers: int = 4,
    pin_memory: bool = True,
    seed: int = 0,
) -> MaeDataModule:
    """A folder of images (recursive). A seeded `val_fraction` of the files (at least one) is
    held out for validation; 0 disables validation."""
    if root is None:
        raise ValueError("data=images needs data.root=/path/to/images")
    files = list_images(Path(root))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    shuffled = files[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, int(len(files) * val_fraction)) if val_fraction > 0 and len(files) > 1 else 0
    val_files, train_files = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    skipped = SkipCounter()  # one counter for both splits and every worker
    return MaeDataModule(
        ImageFolderDataset(train_files, MaeTrainTransform(img_size, crop_scale), skipped),
        ImageFolderDataset(val_files, MaeEvalTransform(img_size), skipped) if val_files else None,
        batch_size,
        num_workers,
        pin_memory,
        seed,
        skip_counter=skipped,
    )
