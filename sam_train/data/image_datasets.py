"""Map-style image datasets for stage 1: an image folder, and crops of in-memory photos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sam_train.data.image_files import IMAGE_SUFFIXES, find_images
from sam_train.data.resumable import seeded, split_key
from sam_train.data.skipped import SkipCounter


def list_images(root: str | Path) -> list[Path]:
    """Every image under `root` (recursive), sorted; a clear error when there is none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist; set data.root to a folder of "
            "images (searched recursively)"
        )
    files = find_images(root)
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}; "
            "point data.root at a folder that holds them"
        )
    return files


class ImageFolderDataset(Dataset):
    """Images from a list of files; keys are indices or (index, augmentation seed).

    A file that cannot be read or decoded is skipped, counted in `skip_counter` (shared with
    the DataLoader workers; logged as `data/skipped`), and the next file is returned in its
    place, so one bad image never stops a run. Errors of the transform are not caught: they
    are bugs, not bad files.
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[Image.Image], torch.Tensor],
        skip_counter: SkipCounter | None = None,
    ):
        self.files = list(files)
        self.transform = transform
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key)
        for offset in range(min(len(self.files), 100)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                with Image.open(path) as img:
                    rgb = img.convert("RGB")  # decodes the whole file
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
                self.skip_counter.add("corrupt", str(path), err)
                continue
            with seeded(seed):
                return self.transform(rgb)
        raise RuntimeError(f"100 unreadable images in a row around {self.files[index]}")


class PhotoCropsDataset(Dataset):
    """`samples_per_epoch` transformed views of a few in-memory photos (cycled in order):
    PIL images or uint8 tensors [3, H, W], whichever `transform` takes."""

    def __init__(
        self,
        photos: Sequence[Image.Image | torch.Tensor],
        transform: Callable[[Image.Image | torch.Tensor], torch.Tensor],
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
