"""Text on pictures: titles, column labels and legends, drawn with Pillow's built-in font."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam_train.files import atomic_path

BACKGROUND = (24, 24, 24)
TEXT = (240, 240, 240)


def font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text_bar(width: int, text: str, height: int = 22, size: int = 13) -> np.ndarray:
    """A dark strip `height` x `width` with `text` on its left: [height, width, 3] uint8."""
    bar = Image.new("RGB", (width, height), BACKGROUND)
    ImageDraw.Draw(bar).text((6, (height - size) // 2 - 1), text, fill=TEXT, font=font(size))
    return np.asarray(bar)


def column_labels(widths: list[int], labels: list[str], height: int = 20) -> np.ndarray:
    """One label centred over each column of the given widths: [height, sum(widths), 3]."""
    bar = Image.new("RGB", (sum(widths), height), BACKGROUND)
    draw, f, x = ImageDraw.Draw(bar), font(12), 0
    for w, label in zip(widths, labels):
        tw = draw.textlength(label, font=f)
        draw.text((x + max(0, (w - tw) / 2), 3), label, fill=TEXT, font=f)
        x += w
    return np.asarray(bar)


def label_box(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int = 12):
    """`text` on a black box at `xy` (readable on any image)."""
    f = font(size)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=f)
    draw.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=(0, 0, 0))
    draw.text(xy, text, fill=TEXT, font=f)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of possibly different widths, top to bottom, padded on the right."""
    width = max(r.shape[1] for r in rows)
    padded = [
        np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), BACKGROUND, np.uint8)], 1)
        if r.shape[1] < width
        else r
        for r in rows
    ]
    return np.concatenate(padded, axis=0)


def save_png(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def save_caption(path: str | Path, text: str) -> None:
    """A short text file beside the pictures saying how to read them."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.strip() + "\n")
