"""Which files count as images, for every reader and converter (`data=images`,
`sam-prep images`): one list, so a folder that trains also converts."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def find_images(root: Path) -> list[Path]:
    """Every image file under `root` (recursive), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
