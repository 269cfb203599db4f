"""Image pixels of any depth -> the 8-bit RGB that shards hold.

Shards store `jpg`/`png` RGB. Microscopy and medical images arrive as 16-bit or float,
single- or multi-channel, often as TIFF; `Normalize` maps them to 0..255 with one of three
rules (`to_8bit`). Without a rule, an image that is not
8-bit is skipped and counted (`image_not_8bit`): a silent clip to 255 would train on garbage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.common import EncodedImage, PrepError, SkipSample, resized_shape

TIFF_SUFFIXES = (".tif", ".tiff")
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Normalize:
    """How pixel values become 0..255: values at `lo` -> 0, at `hi` -> 255, linear, clipped.

    kind: "percentile" (lo/hi = the image's own percentiles `low`, `high` over all channels),
        "minmax" (the image's min and max) or "range" (fixed lo = `low`, hi = `high`).
    """

    kind: str
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Normalize:
        """'percentile:1,99.8' | 'minmax' | 'range:0,4095' -> Normalize; PrepError when not."""
        kind, _, rest = text.strip().partition(":")
        try:
            values = [float(v) for v in rest.split(",")] if rest else []
        except ValueError:
            values = None
        if kind == "minmax" and not rest:
            return cls("minmax")
        if kind in ("percentile", "range") and values and len(values) == 2:
            low, high = values
            if high > low and (kind == "range" or 0 <= low < high <= 100):
                return cls(kind, low, high)
        raise PrepError(
            f"--normalize {text!r} is not understood; use percentile:LOW,HIGH (e.g. "
            "percentile:1,99.8), minmax, or range:LO,HI (e.g. range:0,4095)"
        )

    def spec(self) -> str:
        """The text form, for the manifest."""
        if self.kind == "minmax":
            return "minmax"
        return f"{self.kind}:{self.low:g},{self.high:g}"

    def bounds(self, arr: np.ndarray) -> tuple[float, float]:
        """(lo, hi) for this image."""
        if self.kind == "range":
            return self.low, self.high
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if finite.size == 0:
            return 0.0, 1.0
        if self.kind == "minmax":
            return float(finite.min()), float(finite.max())
        lo, hi = percentiles(finite, (self.low, self.high))
        return float(lo), float(hi)

    def apply(self, arr: np.ndarray) -> tuple[np.ndarray, dict]:
        """Any-dtype array -> (uint8 array of the same shape, {"lo", "hi"} actually used).
        8/16-bit integers go through a lookup table of every possible value (one gather
        instead of four float passes over the image); the same float32 formula either way."""
        lo, hi = self.bounds(arr)
        if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
            info = np.iinfo(arr.dtype)
            lut = _to_uint8(np.arange(info.min, info.max + 1, dtype=np.float32), lo, hi)
            index = arr if info.min == 0 else arr.astype(np.int32) - info.min
            return lut[index], {"lo": lo, "hi": hi}
        out = np.nan_to_num(arr.astype(np.float32), nan=lo, posinf=hi, neginf=lo)
        return _to_uint8(out, lo, hi), {"lo": lo, "hi": hi}


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 values -> uint8: lo -> 0, hi -> 255, linear, rounded, clipped (in place)."""
    scale = np.float32(255.0 / (hi - lo) if hi > lo else 0.0)
    values -= np.float32(lo)
    values *= scale
    values += np.float32(0.5)
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def percentiles(arr: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """`np.percentile(arr, qs)` (linear interpolation), from a histogram for 8/16-bit integers:
    one counting pass instead of a partial sort of every pixel (4x faster on a 4096 px slide)."""
    if arr.dtype.kind not in "ui" or arr.dtype.itemsize > 2:
        return [float(v) for v in np.percentile(arr, qs)]
    flat = arr.ravel()
    offset = int(flat.min())
    cum = np.cumsum(np.bincount(flat.astype(np.int32) - offset if offset else flat))
    n, out = int(cum[-1]), []
    for q in qs:
        pos = q / 100 * (n - 1)
        rank = int(np.floor(pos))
        # the value of 0-based rank r is the first v with more than r pixels <= v
        a = int(np.searchsorted(cum, rank, side="right"))
        b = int(np.searchsorted(cum, min(rank + 1, n - 1), side="right"))
        out.append(offset + a + (pos - rank) * (b - a))
    return out


def read_pixels(path: Path, raw: bytes | None = None) -> np.ndarray:
    """The image's pixel array as stored: [H, W] or [H, W, C], any dtype.
    TIFF through tifffile (16-bit, float, channel-first stacks); the rest through PIL.
    raw: the file's bytes when already in memory (then `path` only names it)."""
    file = path if raw is None else io.BytesIO(raw)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(file)
        else:
            with Image.open(file) as img:
                img.load()
                if img.mode in ("LA", "La"):
                    img = img.convert("L")
                elif img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    img = img.convert("RGB")
                arr = np.asarray(img)
    except FileNotFoundError as err:
        raise SkipSample("image_missing", str(path)) from err
    except (*_DECODE_ERRORS, RuntimeError) as err:  # tifffile raises TiffFileError(ValueError)
        raise SkipSample("image_unreadable", f"{path}: {err}") from err
    if arr.ndim < 2 or arr.size == 0:  # tifffile reads a corrupt file as no pages, not an error
        raise SkipSample("image_unreadable", f"{path}: no pixels (corrupt file?)")
    return channels_last(arr, path)


def image_hw(path: Path) -> tuple[int, int] | None:
    """(h, w) from the file's header, without decoding the pixels; None when unreadable."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return tuple(shape[:2] if len(shape) == 2 or shape[-1] <= 4 else shape[-2:])
        with Image.open(path) as img:
            return img.height, img.width
    except Exception:  # noqa: BLE001  (the conversion itself reports the file)
        return None


def channels_last(arr: np.ndarray, path: Path | str = "") -> np.ndarray:
    """[H, W], [H, W, C] or channel-first [C, H, W] (C <= 4) -> [H, W] or [H, W, C]."""
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 3 and arr.shape[0] <= 4 < min(arr.shape[1:]) and arr.shape[2] > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] <= 4):
        return arr
    raise SkipSample(
        "image_not_2d", f"{path}: shape {arr.shape} (stacks and volumes: save 2-D planes)"
    )


def to_8bit(arr: np.ndarray, normalize: Normalize | None) -> tuple[np.ndarray, dict | None]:
    """[H, W] / [H, W, C] of any dtype -> (uint8 [H, W] grey or [H, W, 3] RGB, the mapping
    used or None).

    One channel stays grey (stored as an "L" PNG, read as RGB by the datamodules: a third of
    the bytes to compress); 2 channels get a zero blue channel; a 4th (alpha) is dropped. The
    mapping is computed over all kept channels together, so their balance is kept.
    """
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    mapping = None
    if normalize is not None:
        arr, mapping = normalize.apply(arr)
    elif arr.dtype != np.uint8:
        raise SkipSample(
            "image_not_8bit",
            f"{arr.dtype} pixels; pass --normalize percentile:1,99.8 (or minmax, range:LO,HI)",
        )
    if arr.ndim == 3 and arr.shape[2] == 2:
        arr = np.concatenate([arr, np.zeros_like(arr[:, :, :1])], axis=2)
    return np.ascontiguousarray(arr), mapping


def encode_pixels(
    rgb: np.ndarray, ext: str, max_side: int | None = None, quality: int = 95
) -> EncodedImage:
    """uint8 [H, W] grey or [H, W, 3] RGB -> EncodedImage (resized so the longest side is at most max_side).
    PNG with a fast compression level: tiles of large images are many, and PNG is lossless."""
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    size = resized_shape(w, h, max_side)
    if size != (w, h):
        img = img.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return EncodedImage(buf.getvalue(), ext, size, (w, h))


def stored_ext(path: Path) -> str:
    """JPEG sources stay JPEG (already lossy); everything else is stored as lossless PNG."""
    return "jpg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
