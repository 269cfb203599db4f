"""Stage-1 crops: torch ops on uint8 photos, the same augmentation as torchvision's PIL pipeline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from sam_train.data.mae_datamodule import _shrink, sample_datamodule
from sam_train.data.resumable import seeded
from sam_train.data.sample_images import load_sample_photos
from sam_train.data.transforms import MaeTrainTransform, resize_uint8
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD

SIZE = 64


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    names = ["astronaut", "rocket", "retina", "voc"]  # square, tall and wide photos
    return [_shrink(im, 2 * SIZE) for im in load_sample_photos(names).values()]


def grey_levels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised [3, S, S] -> 0-255 units."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (normalised * std + mean) * 255


def test_crops_have_torchvisions_box_and_flip_from_a_tensor_or_a_pil_photo(photos):
    torchvision_pipeline = v2.Compose(
        [
            v2.RandomResizedCrop(
                SIZE, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC
            ),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ours = MaeTrainTransform(SIZE)
    flips = 0
    for seed in range(24):
        photo = photos[seed % len(photos)]
        with seeded(seed):
            ref = grey_levels(torchvision_pipeline(photo))
        with seeded(seed):
            from_tensor = ours(pil_to_tensor(photo))
        with seeded(seed):
            from_pil = ours(photo)
        assert torch.equal(from_tensor, from_pil)
        got = grey_levels(from_tensor)
        # same box and flip: a box one pixel off is 3-18 grey levels off on average here;
        # the resampling differs by rounding (and Pillow 13 may run its passes the other way)
        assert (got - ref).abs().mean() < 0.5, seed
        mirrored = (got.flip(-1) - ref).abs().mean()
        flips += bool(mirrored < (got - ref).abs().mean())
    assert flips == 0


@pytest.mark.parametrize("hw", [(120, 96), (40, 50), (SIZE, 90), (120, 120)])
def test_resize_uint8_is_pils_bicubic_within_one_grey_level(photos, hw):
    h, w = hw
    crop = photos[0].crop((3, 5, 3 + w, 5 + h))
    # PIL's horizontal pass, then its vertical pass (the order torch's kernel runs them in)
    ref = pil_to_tensor(crop.resize((SIZE, h), Image.BICUBIC).resize((SIZE, SIZE), Image.BICUBIC))
    full = pil_to_tensor(photos[0])
    got = resize_uint8(full[:, 5 : 5 + h, 3 : 3 + w], SIZE)  # a strided view of the photo
    assert got.shape == (3, SIZE, SIZE) and got.dtype == torch.uint8 and got.is_contiguous()
    assert (got.int() - ref.int()).abs().max() <= 1


def test_seeded_crops_repeat_and_leave_the_global_generator_alone(photos):
    ours = MaeTrainTransform(SIZE)
    image = pil_to_tensor(photos[1])
    before = torch.random.get_rng_state()
    with seeded(7):
        a = ours(image)
    with seeded(7):
        b = ours(image)
    with seeded(8):
        c = ours(image)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_sample_datamodule_keeps_uint8_photos_and_batches_normalised_crops():
    dm = sample_datamodule(SIZE, batch_size=4, samples_per_epoch=8, val_photos=["chelsea"])
    assert all(p.dtype == torch.uint8 and p.shape[0] == 3 for p in dm.train_set.photos)
    assert max(max(p.shape[1:]) for p in dm.train_set.photos) == 2 * SIZE
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, SIZE, SIZE) and batch.dtype == torch.float32
    levels = torch.stack([grey_levels(x) for x in batch])
    assert levels.min() > -0.01 and levels.max() < 255.01
    assert dm.num_workers == 0  # the default: crops made in the training process


@pytest.mark.parametrize("scale", [(0.0, 1.0), (0.8, 0.2), (0.2, 1.5)])
def test_bad_crop_scale_is_a_one_line_error(scale):
    with pytest.raises(ValueError, match=r"data.crop_scale must be \[min, max\]"):
        MaeTrainTransform(SIZE, scale)
