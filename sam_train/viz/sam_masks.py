"""Stage-2 pictures: one tile per (mask, prompt), rows of tiles with labels and a legend, and
the click curve.

A tile shows the image cropped to its real (un-padded) part, the ground truth as a green
outline, the prediction as a magenta outline over a light magenta fill, the prompt (a yellow
point, a blue background click, a yellow box) and the IoU. Every outline and marker has a black
rim, so it stays visible on red, green or white objects alike.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from sam_train.models.pixels import denormalise_pixels
from sam_train.viz.labels import BACKGROUND, font, label_box, stack_rows, text_bar

GT_COLOUR = (0, 230, 0)
PRED_COLOUR = (255, 0, 255)
PROMPT_COLOUR = (255, 230, 0)
NEGATIVE_COLOUR = (0, 160, 255)
RIM = (0, 0, 0)
GAP = 4


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the mask's boundary, inside the mask."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour, width: int = 2) -> None:
    """A `width`-pixel outline of `mask` in `colour` with a 1-pixel black rim on each side."""
    if not mask.any():
        return
    outer = ndimage.binary_dilation(mask, iterations=1) & ~mask
    inner = _ring(mask, width + 1) & ~_ring(mask, width)
    rgb[outer | inner] = RIM
    rgb[_ring(mask, width)] = colour


def draw_point(draw: ImageDraw.ImageDraw, x: float, y: float, positive: bool, r: int = 5) -> None:
    colour = PROMPT_COLOUR if positive else NEGATIVE_COLOUR
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=RIM, width=2)


def draw_box(draw: ImageDraw.ImageDraw, box: list[float], colour=PROMPT_COLOUR) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=RIM, width=4)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)


def mask_tile(
    image: torch.Tensor,
    gt: torch.Tensor,
    pred: torch.Tensor,
    hw: tuple[int, int],
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box: torch.Tensor | None = None,
    iou: float | None = None,
    name: str = "",
    height: int = 192,
    pixel_norm: str = "imagenet",
) -> np.ndarray:
    """One tile, the image cropped to `hw` and scaled to `height` rows.

    image: [3, S, S] normalised the model's way (`pixel_norm`, `Sam.pixel_norm`: the tile
    shows the pixels the model saw); gt, pred: [S, S] bool; points: [N, 2] xy pixels of the S x S
    frame with labels [N] (1 foreground, 0 background, -1 padding); box: [4] xyxy.
    Returns [height, width, 3] uint8, width following the image's aspect ratio.
    """
    h, w = hw
    scale = height / h
    size = (max(1, round(w * scale)), height)
    rgb = denormalise_pixels(image[:, :h, :w].float(), pixel_norm).clamp(0, 1)  # [3, h, w]
    rgb = (rgb.permute(1, 2, 0).cpu().numpy() * 255).round()
    rgb = np.asarray(Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.BILINEAR))
    gt_np, pred_np = (
        np.asarray(Image.fromarray(m[:h, :w].cpu().numpy()).resize(size, Image.NEAREST))
        for m in (gt, pred)
    )
    out = rgb.astype(np.float32)
    out[pred_np] = 0.7 * out[pred_np] + 0.3 * np.array(PRED_COLOUR)
    out = out.round().astype(np.uint8)
    draw_outline(out, pred_np, PRED_COLOUR, width=2)
    draw_outline(out, gt_np, GT_COLOUR, width=2)  # on top: the target stays visible
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    if box is not None:
        draw_box(draw, [float(v) * scale for v in box.tolist()])
    if points is not None:
        for (x, y), lab in zip(points.tolist(), labels.tolist()):
            if lab >= 0:
                draw_point(draw, x * scale, y * scale, positive=lab == 1)
    if iou is not None:
        label_box(draw, (4, 4), f"IoU {iou:.2f}")
    if name:
        label_box(draw, (4, height - 16), name, size=11)
    return np.asarray(img)


def tile_row(tiles: list[np.ndarray], label: str = "") -> np.ndarray:
    """Tiles side by side with `GAP` pixels between them, `label` in a strip above."""
    spaced = []
    for t in tiles:
        spaced += [t, np.full((t.shape[0], GAP, 3), BACKGROUND, np.uint8)]
    row = np.concatenate(spaced[:-1], axis=1)
    return stack_rows([text_bar(row.shape[1], label, height=20, size=12), row]) if label else row


PROMPTS = ("point", "click", "box")  # the prompt marks a page may show


def legend(width: int, prompts: tuple[str, ...] = PROMPTS) -> np.ndarray:
    """A strip naming the colours: ground truth, prediction, and the prompt marks the page
    uses (`prompts`, of PROMPTS: a box-only page lists no point markers)."""
    unknown = set(prompts) - set(PROMPTS)
    if unknown:
        raise ValueError(f"unknown prompt marks {sorted(unknown)}; pick from {PROMPTS}")
    height = 24
    img = Image.fromarray(text_bar(max(width, 560), "", height=height))
    draw, f, x, y = ImageDraw.Draw(img), font(12), 8, height // 2
    marks = {
        "point": ("point prompt", lambda x: draw_point(draw, x + 9, y, True, r=5)),
        "click": ("background click", lambda x: draw_point(draw, x + 9, y, False, r=5)),
        "box": ("box prompt", lambda x: draw_box(draw, [x + 2, y - 6, x + 16, y + 6])),
    }
    entries = [
        ("ground truth", lambda x: draw.line([x, y, x + 18, y], fill=GT_COLOUR, width=3)),
        ("prediction", lambda x: draw.line([x, y, x + 18, y], fill=PRED_COLOUR, width=3)),
        *(marks[p] for p in PROMPTS if p in prompts),
    ]
    for text, mark in entries:
        mark(x)
        draw.text((x + 24, y - 7), text, fill=(240, 240, 240), font=f)
        x += 24 + int(draw.textlength(text, font=f)) + 18
    return np.asarray(img)


def tile_grid(
    rows: list[tuple[str, list[np.ndarray]]], title: str = "", prompts: tuple[str, ...] = PROMPTS
) -> np.ndarray:
    """Labelled rows of tiles, `title` on top, the legend (of the `prompts` marks drawn) at the
    bottom."""
    body = [tile_row(tiles, label) for label, tiles in rows if tiles]
    width = max(r.shape[1] for r in body)
    top = [text_bar(width, title, height=24, size=14)] if title else []
    return stack_rows([*top, *body, legend(width, prompts)])


def click_curve_png(miou_by_click: list[float], path, title: str = "") -> None:
    """mIoU after 1..N clicks as a PNG line plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sam_train.files import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    clicks = list(range(1, len(miou_by_click) + 1))
    ax.plot(clicks, miou_by_click, marker="o")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.set_xticks(clicks)
    ax.grid(alpha=0.3)
    ax.set_title(title or "validation mIoU after N clicks")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
