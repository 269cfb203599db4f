"""Stage-1 LightningDataModule over map-style datasets, and the factories the configs call."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from sam_train.data.image_datasets import ImageFolderDataset, PhotoCropsDataset, list_images
from sam_train.data.sample_images import DEFAULT_VAL_PHOTOS, load_sample_photos
from sam_train.data.transforms import MaeEvalTransform, MaeTrainTransform


class MaeDataModule(L.LightningDataModule):
    """Batches of normalised images [B, 3, S, S] from a train and a validation dataset."""

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset | None,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        self.train_set, self.val_set = train_set, val_set
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(dataset) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


def sample_datamodule(
    img_size: int,
    batch_size: int = 16,
    samples_per_epoch: int = 256,
    val_photos: list[str] | tuple[str, ...] = DEFAULT_VAL_PHOTOS,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    num_workers: int = 0,
    pin_memory: bool = False,
) -> MaeDataModule:
    """The embedded sample photos: random crops of the training photos; the held-out photos,
    centre-cropped, for validation."""
    photos = load_sample_photos()
    unknown = set(val_photos) - set(photos)
    if unknown:
        raise ValueError(f"data.val_photos names unknown photos {sorted(unknown)}; have {sorted(photos)}")
    train = [im for name, im in photos.items() if name not in val_photos]
    val = [photos[name] for name in val_photos]
    return MaeDataModule(
        PhotoCropsDataset(train, MaeTrainTransform(img_size, crop_scale), samples_per_epoch),
        PhotoCropsDataset(val, MaeEvalTransform(img_size), len(val)) if val else None,
        batch_size,
        num_workers,
        pin_memory,
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
    return MaeDataModule(
        ImageFolderDataset(train_files, MaeTrainTransform(img_size, crop_scale)),
        ImageFolderDataset(val_files, MaeEvalTransform(img_size)) if val_files else None,
        batch_size,
        num_workers,
        pin_memory,
    )
