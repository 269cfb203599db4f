"""Image transforms for stage 1 (MAE): PIL RGB image -> normalised tensor [3, S, S]."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD


def _to_normalised_tensor() -> list:
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


class MaeTrainTransform:
    """RandomResizedCrop (scale 0.2-1, bicubic), horizontal flip, normalise (the MAE recipe)."""

    def __init__(
        self, img_size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True
    ) -> None:
        ops = [
            v2.RandomResizedCrop(
                img_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC
            )
        ]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        self.ops = v2.Compose(ops + _to_normalised_tensor())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.ops(img)


class MaeEvalTransform:
    """Resize the short side to `img_size`, centre crop, normalise: deterministic."""

    def __init__(self, img_size: int) -> None:
        self.ops = v2.Compose(
            [
                v2.Resize(img_size, interpolation=v2.InterpolationMode.BICUBIC),
                v2.CenterCrop(img_size),
                *_to_normalised_tensor(),
            ]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.ops(img)


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """Undo `Normalize` for display: [B, 3, H, W] -> values in [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)
