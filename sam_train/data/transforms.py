"""Image transforms for stage 1 (MAE): PIL RGB image or uint8 tensor -> normalised tensor
[3, S, S]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels

# RandomResizedCrop's aspect-ratio range (the MAE recipe keeps torchvision's default)
CROP_RATIO = (3 / 4, 4 / 3)


def _to_normalised_tensor() -> list:
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] (a strided crop view is fine) -> uint8 [3, size, size], antialiased
    bicubic, about 5x faster than PIL's resize (sample-photo crops to 224, 1 thread).

    torch's uint8 kernel uses PIL's bicubic filter and runs the horizontal pass first, as
    Pillow long did: it is then within one grey level of `Image.resize(..., BICUBIC)`. Pillow
    13 runs the vertical pass first when the height shrinks much more than the width; each
    pass rounds and clamps to 0-255, so those crops differ by up to ~10 grey levels at sharp
    edges (0.1% of pixels). Channels-last is the layout the vectorised kernel reads fastest.
    """
    if image.shape[-2:] == (size, size):
        return image
    batch = image[None].contiguous(memory_format=torch.channels_last)
    out = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True)
    return out[0].contiguous()  # [3, size, size]


class MaeTrainTransform:
    """RandomResizedCrop (scale 0.2-1, bicubic), horizontal flip, normalise (the MAE recipe).

    Takes a PIL RGB image or an RGB uint8 tensor [3, H, W] (photos decoded once and kept in
    memory). The crop box and the flip are drawn as torchvision's RandomResizedCrop and
    RandomHorizontalFlip draw them, from torch's global generator and in the same order, so a
    seeded sample gets the same box and flip as with those transforms. Only the crop is
    converted from PIL, and it is resized on uint8 with `resize_uint8`.
    """

    def __init__(
        self, img_size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True
    ) -> None:
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(scale)}"
            )
        self.img_size = img_size
        self.scale = [float(lo), float(hi)]
        self.hflip = hflip

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        top, left, h, w = RandomResizedCrop.get_params(img, self.scale, list(CROP_RATIO))
        if isinstance(img, Image.Image):
            crop = TF.pil_to_tensor(img.crop((left, top, left + w, top + h)))
        else:
            crop = img[:, top : top + h, left : left + w]
        out = resize_uint8(crop, self.img_size)  # uint8 [3, S, S]
        if self.hflip and torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        return normalise_pixels(out)


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
