"""One source image and its objects -> the stored samples: one whole image, or one per tile.

Every converter ends here, so `--tile`, `--overlap` and `--normalize` mean the same for all of
them. An 8-bit JPEG/PNG that needs neither keeps the old path (`encode_image`: the original
bytes when not resized); anything else is decoded to an array, mapped to 8 bits
(`pixels.to_8bit`), cut into tiles when asked, and re-encoded (JPEG stays JPEG, else PNG).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.annotations import KEEP_IMAGE_EXTRA, build_record
from data_prep.common import EncodedImage, PrepError, SkipSample, encode_image
from data_prep.instances import Instance, anns_to_instances, instances_to_anns
from data_prep.pixels import (
    TIFF_SUFFIXES,
    Normalize,
    encode_pixels,
    image_hw,
    read_pixels,
    stored_ext,
    to_8bit,
)
from data_prep.tiling import check_tiling, tile_annotations, tile_boxes, tile_image

# modes PIL decodes to more than 8 bits per channel
_DEEP_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")

# counted (under "skipped": stage 2 skips them) when --keep-empty writes an image without masks
KEPT_EMPTY = "kept_without_masks"

# (key suffix, {ext: bytes}) per stored sample; a converter's encode returns a list of these
Samples = list[tuple[str, dict[str, bytes]]]


@dataclass(frozen=True)
class PixelOptions:
    """What happens to the pixels of every source image.

    max_side: resize the longest side to at most this (not with `tile`).
    quality: JPEG quality of re-encoded images.
    normalize: the mapping of non-8-bit values to 0..255 (None: such images are skipped).
    tile: cut into tiles of this side (None: keep whole images); overlap: pixels shared by
        neighbouring tiles; tile_min_area: clipped pieces with fewer pixels are dropped.
    """

    max_side: int | None = None
    quality: int = 95
    normalize: Normalize | None = None
    tile: int | None = None
    overlap: int = 0
    tile_min_area: int = 16

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.overlap)
        if self.max_side is not None and self.max_side < 1:
            raise PrepError(f"--max-side {self.max_side}: give a side in pixels, e.g. 1024")
        if not 1 <= self.quality <= 100:
            raise PrepError(f"--quality {self.quality}: give a JPEG quality from 1 to 100")
        if self.tile and self.max_side:
            raise PrepError("use --tile or --max-side, not both (tiles keep full resolution)")

    def content_args(self) -> dict:
        """Manifest entries; the tile and normalize keys appear only when used, so shards made
        without them keep their earlier plan digest."""
        args: dict = {"max_side": self.max_side, "quality": self.quality}
        if self.normalize is not None:
            args["normalize"] = self.normalize.spec()
            args["normalize_rule"] = (
                "per image, over all channels: lo -> 0, hi -> 255, linear, clipped; "
                "lo/hi of each image in its json image.normalize"
            )
        if self.tile:
            args.update(tile=self.tile, overlap=self.overlap, tile_min_area=self.tile_min_area)
        return args


def planned_samples(
    opts: PixelOptions, path: Path | None = None, hw: tuple[int, int] | None = None
) -> int:
    """Samples one image is planned to make, for grouping shards by `maxcount`: its number
    of tiles with --tile (size from `hw`, else the file header), else 1."""
    if not opts.tile:
        return 1
    hw = hw or (image_hw(path) if path is not None else None)
    return len(tile_boxes(*hw, opts.tile, opts.overlap)) if hw else 1


@dataclass
class Source:
    """A decoded source image: either kept bytes (`encoded`) or 8-bit pixels (`rgb`)."""

    hw: tuple[int, int]  # (h, w) of the source
    ext: str
    encoded: EncodedImage | None = None
    rgb: np.ndarray | None = None  # [H, W, 3] or [H, W] (grey) uint8
    mapping: dict | None = None  # {"lo", "hi"} of --normalize


def load_source(path: Path, opts: PixelOptions, raw: bytes | None = None) -> Source:
    """Read one image the cheapest way `opts` allows; SkipSample when it cannot be used.
    raw: the file's bytes when already in memory (then `path` only names it)."""
    if not opts.normalize and not opts.tile and path.suffix.lower() not in TIFF_SUFFIXES:
        if _pil_mode(path if raw is None else io.BytesIO(raw)) not in _DEEP_MODES:
            img = encode_image(path, opts.max_side, opts.quality, raw)
            w, h = img.source_size
            return Source((h, w), img.ext, encoded=img)
    rgb, mapping = to_8bit(read_pixels(path, raw), opts.normalize)
    return Source(rgb.shape[:2], stored_ext(path), rgb=rgb, mapping=mapping)


def _pil_mode(file: Path | io.BytesIO) -> str | None:
    try:
        with Image.open(file) as img:
            return img.mode
    except Exception:  # noqa: BLE001  (encode_image reports the file as unreadable)
        return None


def stage2_samples(
    src: Source,
    image: dict,
    opts: PixelOptions,
    anns: list[dict] | None = None,
    instances: list[Instance] | None = None,
    categories: dict | None = None,
    keep_empty: bool = False,
) -> tuple[Samples, Counter]:
    """The stored stage-2 samples of one source image with its objects (COCO `anns` or
    `instances`), and the per-annotation skip counts. SkipSample when nothing is left, unless
    `keep_empty`: then images and tiles without objects are written with no annotations
    (stage 1 reads them; the stage-2 reader skips them as `no_masks`)."""
    categories = categories or {}
    if opts.tile:
        if instances is None:
            instances, skipped = anns_to_instances(anns or [], src.hw, categories)
        else:
            skipped = Counter()
        return _tiles(src, image, opts, instances, skipped, keep_empty)
    if anns is None:
        anns = instances_to_anns(instances or [], src.hw)
    enc = src.encoded or encode_pixels(src.rgb, src.ext, opts.max_side, opts.quality)
    (w, h) = enc.size
    try:
        record, skipped = build_record(image, anns, src.hw, (h, w), categories)
    except SkipSample as skip:
        if not keep_empty:
            raise
        record, skipped = build_record(image, [], src.hw, (h, w), {}, allow_empty=True)
        skipped = Counter(skip.also) + Counter({KEPT_EMPTY: 1})
    if src.mapping:
        record["image"]["normalize"] = src.mapping
    return [("", {enc.ext: enc.data, "json": json.dumps(record).encode()})], skipped


def _tiles(
    src: Source,
    image: dict,
    opts: PixelOptions,
    instances: list[Instance],
    skipped: Counter,
    keep_empty: bool,
) -> tuple[Samples, Counter]:
    if not instances and not keep_empty:
        raise SkipSample("no_valid_annotations", str(image.get("file_name")), also=skipped)
    samples = []
    for box in tile_boxes(*src.hw, opts.tile, opts.overlap):
        anns, dropped = tile_annotations(instances, box, opts.tile_min_area)
        skipped.update(dropped)
        if not anns:
            skipped[KEPT_EMPTY if keep_empty else "tile_without_masks"] += 1
            if not keep_empty:
                continue
        enc = encode_pixels(tile_image(src.rgb, box), src.ext, None, opts.quality)
        record = {"image": _tile_meta(image, box, src), "annotations": anns}
        samples.append(
            (_tile_suffix(box), {enc.ext: enc.data, "json": json.dumps(record).encode()})
        )
    return samples, skipped


def stage1_samples(src: Source, name: str, opts: PixelOptions) -> Samples:
    """The stored stage-1 samples (images only; tiles carry a json with their origin)."""
    if not opts.tile:
        enc = src.encoded or encode_pixels(src.rgb, src.ext, opts.max_side, opts.quality)
        return [("", {enc.ext: enc.data})]
    samples = []
    for box in tile_boxes(*src.hw, opts.tile, opts.overlap):
        enc = encode_pixels(tile_image(src.rgb, box), src.ext, None, opts.quality)
        meta = json.dumps({"image": _tile_meta({"file_name": name}, box, src)}).encode()
        samples.append((_tile_suffix(box), {enc.ext: enc.data, "json": meta}))
    return samples


def _tile_meta(image: dict, box: tuple[int, int, int, int], src: Source) -> dict:
    y, x, th, tw = box
    meta = {
        "width": tw,
        "height": th,
        "id": image.get("id"),
        "file_name": image.get("file_name"),
        "tile": {"x": x, "y": y, "source_width": src.hw[1], "source_height": src.hw[0]},
        **{k: image[k] for k in KEEP_IMAGE_EXTRA if k in image},
    }
    if src.mapping:
        meta["normalize"] = src.mapping
    return meta


def _tile_suffix(box: tuple[int, int, int, int]) -> str:
    return f"_y{box[0]:05d}_x{box[1]:05d}"
