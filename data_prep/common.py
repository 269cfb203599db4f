"""Pieces every converter shares: the two exceptions, file listing, sample keys, image bytes.

`PrepError` is a user mistake the CLI reports in one line (missing file, empty folder);
`SkipSample` is one bad input that is counted by reason and passed over, never fatal.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sam_train.data.image_files import IMAGE_SUFFIXES  # noqa: F401  (what `images` converts)
from sam_train.data.skipped import SkipSample  # noqa: F401  (counted by reason in manifests)
from sam_train.errors import UserError


class PrepError(UserError, RuntimeError):
    """A conversion cannot start or go on; the message names the path and the fix."""


def list_files(
    root: str | Path, suffixes: tuple[str, ...], what: str, exclude: str | Path | None = None
) -> list[Path]:
    """Files under `root` (recursive) with one of `suffixes`, sorted; a PrepError when none.
    exclude: a folder left out (the output, when it lies inside the input); shard folders
    written by sam-prep are always left out."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PrepError(f"{what} folder {str(root)!r} does not exist; pass an existing folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    # shard folders (ours: manifest.json + .parts/) inside the input are outputs, not inputs
    skip = {
        m.parent.resolve() for m in root.rglob("manifest.json") if (m.parent / ".parts").is_dir()
    }
    if exclude is not None:
        skip.add(Path(exclude).expanduser().resolve())
    if skip:
        files = [p for p in files if not any(p.resolve().is_relative_to(d) for d in skip)]
    if not files:
        raise PrepError(
            f"no {what} files ({', '.join(suffixes)}) found under {str(root)!r}; "
            "point the command at the folder that holds them (searched recursively)"
        )
    return files


def sample_key(name: str) -> str:
    """A webdataset key: no dots (webdataset splits the extension at the first dot), no slashes."""
    stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "sample"


def unique_keys(names: list[str]) -> list[str]:
    """`sample_key` of each name, with a suffix where two names map to the same key."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        key = sample_key(name)
        n = seen.get(key, 0)
        seen[key] = n + 1
        keys.append(key if n == 0 else f"{key}_dup{n}")
    return keys


@dataclass
class EncodedImage:
    data: bytes
    ext: str  # "jpg" or "png"
    size: tuple[int, int]  # (w, h) of the stored image
    source_size: tuple[int, int]  # (w, h) of the input image

    @property
    def scale(self) -> float:
        return self.size[0] / self.source_size[0]


def resized_shape(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) with the longest side at most `max_side` (SAM's rounding: int(x * s + 0.5))."""
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))


def encode_image(
    path: Path, max_side: int | None = None, quality: int = 95, raw: bytes | None = None
) -> EncodedImage:
    """Read and fully decode an image (so a truncated file is caught here, not in training),
    then keep its bytes as they are when possible, else re-encode (resized) as jpg or png.
    raw: the file's bytes when they are already in memory (labelme's embedded imageData)."""
    try:
        raw = path.read_bytes() if raw is None else raw
    except OSError as err:
        raise SkipSample("image_missing", str(path)) from err
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            fmt, mode, src = img.format, img.mode, img.size
            size = resized_shape(*src, max_side)
            if size == src and fmt in ("JPEG", "PNG") and mode in ("RGB", "L"):
                return EncodedImage(raw, "jpg" if fmt == "JPEG" else "png", src, src)
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise SkipSample("image_unreadable", f"{path}: {err}") from err
    if size != src:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "PNG":
        rgb.save(buf, format="PNG")
        return EncodedImage(buf.getvalue(), "png", size, src)
    rgb.save(buf, format="JPEG", quality=quality)
    return EncodedImage(buf.getvalue(), "jpg", size, src)
