"""Map-style image datasets for stage 1: an image folder, and crops of in-memory photos."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sam_train.data.resumable import seeded, split_key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(root: str | Path) -> list[Path]:
    """Every image under `root` (recursive), sorted; a clear error when there is none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist; set data.root to a folder of "
            "jpg/png/webp images (searched recursively)"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}; "
            "point data.root at a folder that holds them"
        )
    return files


class ImageFolderDataset(Dataset):
    """Images from a list of files; keys are indices or (index, augmentation seed). An unreadable file is skipped with a warning and counted
    (`num_skipped`), and the next file is returned in its place, so one bad image never stops
    a run."""

    def __init__(self, files: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.files = list(files)
        self.transform = transform
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key)
        for offset in range(min(len(self.files), 100)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                with Image.open(path) as img, seeded(seed):
                    return self.transform(img.convert("RGB"))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                self.num_skipped += 1
                log.warning("skipping unreadable image %s: %s", path, err)
        raise RuntimeError(f"100 unreadable images in a row around {self.files[index]}")


class PhotoCropsDataset(Dataset):
    """`samples_per_epoch` transformed views of a few in-memory photos (cycled in order)."""

    def __init__(
        self,
        photos: Sequence[Image.Image],
        transform: Callable[[Image.Image], torch.Tensor],
        samples_per_epoch: int,
    ) -> None:
        if not photos:
            raise ValueError("PhotoCropsDataset needs at least one photo")
        self.photos = list(photos)
        self.transform = transform
        self.samples_per_epoch = samples_per_epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key)
        with seeded(seed):
            return self.transform(self.photos[index % len(self.photos)])
