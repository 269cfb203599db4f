"""Image folders report what they skip through the same shared counter as shards: counted in
DataLoader workers, read in the training process; a bug in a transform is not skipped."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sam_train.data.image_datasets import ImageFolderDataset
from sam_train.data.mae_datamodule import image_folder_datamodule


def _folder(tmp_path, good: int = 4):
    for i in range(good):
        Image.new("RGB", (48, 40), (40 * i, 90, 30)).save(tmp_path / f"img{i}.tif")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


@pytest.mark.slow
def test_unreadable_images_counted_in_workers_reach_the_datamodule_counter(tmp_path):
    dm = image_folder_datamodule(
        str(_folder(tmp_path)), img_size=32, batch_size=5, val_fraction=0.0, num_workers=1
    )
    batches = list(dm.train_dataloader())
    assert sum(b.shape[0] for b in batches) == 5  # the broken file's place filled by the next
    assert dm.skip_counter.as_dict()["corrupt"] >= 1


def test_a_failing_transform_is_an_error_not_a_skipped_image(tmp_path):
    def buggy(img):
        raise ValueError("a bug in the transform")

    files = sorted(_folder(tmp_path).glob("*.tif"))
    dataset = ImageFolderDataset(files, buggy)
    with pytest.raises(ValueError, match="bug in the transform"):
        dataset[0]
    assert dataset.skip_counter.total == 0
    assert isinstance(ImageFolderDataset(files, lambda im: torch.zeros(1))[0], torch.Tensor)
