"""`sam-prep inspect SHARDS`: what a shard folder holds, before a long run is spent on it.

Counts images (and tiles), masks per image, mask areas, categories, what the conversion
skipped and why (from the manifest), and draws the first few samples with their masks.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.common import PrepError
from data_prep.rle import decode_masks, json_to_rle
from data_prep.shard_writer import MANIFEST
from sam_train.data.remote import is_remote, open_shard, read_text

AREA_BINS = (0.001, 0.01, 0.1, 0.5)  # fractions of the image area
AREA_LABELS = ("<0.1%", "0.1-1%", "1-10%", "10-50%", ">50%")
_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128]],
    dtype=np.float32,
)  # fmt: skip


def _folder(folder: str | Path) -> str:
    """A local folder with `~` expanded, or a URL as given (without a trailing slash)."""
    text = str(folder)
    return text.rstrip("/") if is_remote(text) else str(Path(text).expanduser())


def read_manifest(folder: str | Path) -> dict:
    """The folder's manifest, local or at a URL (`https://host/shards`)."""
    path = f"{_folder(folder)}/{MANIFEST}"
    try:
        text = read_text(path)
        if text is None:
            raise FileNotFoundError("no such file")
        return json.loads(text)
    except (OSError, ValueError) as err:
        raise PrepError(
            f"{path!r} cannot be read ({err}); pass a folder written by sam-prep"
        ) from err


def iter_samples(folder: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of every sample, shard by shard in manifest order; the shards are
    streamed, so a folder on a server (http(s)://, s3://, ...) is read the same way."""
    folder = _folder(folder)
    for shard in read_manifest(folder)["shards"]:
        url = f"{folder}/{shard['name']}"
        try:
            stream = open_shard(url)
        except OSError as err:
            raise PrepError(f"{url!r} cannot be opened ({err})") from err
        with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            key, files = None, {}
            for member in tar:
                k, _, ext = member.name.partition(".")
                if k != key and files:
                    yield key, files
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
            if files:
                yield key, files


def shard_stats(folder: str | Path) -> dict:
    """Counts over every sample of the folder (one pass, masks are not decoded)."""
    folder = _folder(folder)
    manifest = read_manifest(folder)
    per_image, areas, fractions, cats = [], [], [], Counter()
    tiles, sources = 0, set()
    for _, files in iter_samples(folder):
        rec = json.loads(files["json"]) if "json" in files else {}
        image, anns = rec.get("image", {}), rec.get("annotations", [])
        if "tile" in image:
            tiles += 1
            sources.add(str(image.get("file_name")))
        if "json" not in files or "annotations" not in rec:
            continue
        per_image.append(len(anns))
        size = max(1, int(image.get("width", 1)) * int(image.get("height", 1)))
        for a in anns:
            areas.append(int(a.get("area", 0)))
            fractions.append(areas[-1] / size)
            cats[a.get("category") or "(none)"] += 1
    n = sum(s["count"] for s in manifest["shards"])
    stats = {
        "folder": str(folder),
        "kind": manifest.get("args", {}).get("kind"),
        "samples": n,
        "tiles": tiles,
        "tiled_source_images": len(sources),
        "images_with_masks": len(per_image),
        "masks": int(sum(per_image)),
        "skipped": manifest.get("skipped", {}),
        "categories": dict(cats.most_common()),
    }
    if per_image:
        stats["masks_per_image"] = {
            "min": int(min(per_image)),
            "median": float(np.median(per_image)),
            "max": int(max(per_image)),
        }
    if areas:
        q = np.percentile(areas, (0, 10, 50, 90, 100))
        stats["mask_area_px"] = dict(zip(("min", "p10", "median", "p90", "max"), q.tolist()))
        edges = (0.0, *AREA_BINS, float("inf"))
        counts = np.histogram(fractions, bins=edges)[0]
        stats["mask_area_of_image"] = dict(zip(AREA_LABELS, counts.tolist()))
    return stats


def format_stats(stats: dict, top: int = 15) -> str:
    """The stats as the lines a person reads."""
    lines = [f"{stats['folder']}  ({stats['kind']})", f"  samples          {stats['samples']}"]
    if stats["tiles"]:
        lines.append(
            f"  tiles            {stats['tiles']} from {stats['tiled_source_images']} images"
        )
    lines.append(f"  with masks       {stats['images_with_masks']}")
    lines.append(f"  masks            {stats['masks']}")
    if "masks_per_image" in stats:
        m = stats["masks_per_image"]
        lines.append(f"  masks per image  min {m['min']}  median {m['median']:g}  max {m['max']}")
    if "mask_area_px" in stats:
        a = stats["mask_area_px"]
        lines.append("  mask area (px)   " + "  ".join(f"{k} {v:g}" for k, v in a.items()))
        lines.append(
            "  area / image     "
            + "  ".join(f"{k}: {v}" for k, v in stats["mask_area_of_image"].items())
        )
    cats = list(stats["categories"].items())
    if cats:
        shown = ", ".join(f"{name} {n}" for name, n in cats[:top])
        more = f" (+{len(cats) - top} more)" if len(cats) > top else ""
        lines.append(f"  categories       {len(cats)}: {shown}{more}")
    for reason, n in stats["skipped"].items():
        lines.append(f"  skipped {n:>8}  {reason}")
    return "\n".join(lines)


def overlay(files: dict[str, bytes], side: int = 256) -> np.ndarray:
    """One sample drawn: its masks filled in colours over the image, [side, side, 3] uint8."""
    ext = "jpg" if "jpg" in files else "png"
    with Image.open(io.BytesIO(files[ext])) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    anns = json.loads(files["json"]).get("annotations", []) if "json" in files else []
    if anns:
        from scipy import ndimage

        masks = decode_masks([json_to_rle(a["segmentation"]) for a in anns])  # [N, H, W]
        for i, m in enumerate(masks):
            colour = _PALETTE[i % len(_PALETTE)]
            rgb[m] = 0.45 * rgb[m] + 0.55 * colour
            rgb[m & ~ndimage.binary_erosion(m)] = colour  # outline: touching objects stay apart
    img = Image.fromarray(rgb.astype(np.uint8))
    s = side / max(img.size)  # fit the panel, up or down
    size = (max(1, min(side, round(img.width * s))), max(1, min(side, round(img.height * s))))
    img = img.resize(size, Image.Resampling.NEAREST if s > 1 else Image.Resampling.BILINEAR)
    out = np.zeros((side, side, 3), dtype=np.uint8)
    out[: img.height, : img.width] = np.asarray(img)
    return out


def write_overlay(folder: str | Path, path: str | Path, n: int = 4, side: int = 256) -> Path:
    """The first `n` samples side by side with their masks, as a PNG at `path`."""
    from sam_train.files import atomic_path

    panels = [overlay(files, side) for _, (_, files) in zip(range(n), iter_samples(folder))]
    if not panels:
        raise PrepError(f"{str(folder)!r} holds no samples to draw")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(panels, axis=1)).save(tmp, format="PNG")
    return path
