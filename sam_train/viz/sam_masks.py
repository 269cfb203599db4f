"""Stage-2 pictures: prompts and masks drawn on images, and the click curve."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from sam_train.data.transforms import denormalise

GT_COLOUR = np.array([0, 255, 0])
PRED_COLOUR = np.array([255, 40, 40])


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def mask_panel(
    image: torch.Tensor,
    gt: torch.Tensor,
    pred: torch.Tensor,
    hw: tuple[int, int],
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box: torch.Tensor | None = None,
    side: int = 256,
) -> np.ndarray:
    """One picture: the image (cropped to its real size), the predicted mask filled in red,
    the ground truth outlined in green, points (green = foreground, red = background), a box.

    image: [3, S, S] normalised; gt, pred: [S, S] bool; points: [N, 2] xy pixels; box: [4] xyxy.
    Returns [side, side * w / h, 3] uint8.
    """
    h, w = hw
    rgb = (denormalise(image[None])[0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.float32)
    rgb, gt_np, pred_np = rgb[:h, :w], gt[:h, :w].cpu().numpy(), pred[:h, :w].cpu().numpy()
    rgb[pred_np] = 0.5 * rgb[pred_np] + 0.5 * PRED_COLOUR
    rgb[_outline(gt_np)] = GT_COLOUR
    scale = side / max(h, w)
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR
    )
    draw = ImageDraw.Draw(img)
    if box is not None:
        draw.rectangle([float(v) * scale for v in box.tolist()], outline=(255, 255, 0), width=2)
    if points is not None:
        for (x, y), lab in zip(points.tolist(), labels.tolist()):
            if lab < 0:
                continue
            colour = (0, 255, 0) if lab == 1 else (255, 0, 0)
            r = 4
            draw.ellipse(
                [x * scale - r, y * scale - r, x * scale + r, y * scale + r],
                fill=colour,
                outline=(255, 255, 255),
            )
    canvas = Image.new("RGB", (side, side), (32, 32, 32))
    canvas.paste(img, (0, 0))
    return np.asarray(canvas)


def panel_grid(panels: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized panels -> one picture, 4 px gaps."""
    rows = [
        np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0))) for p in row], axis=1) for row in panels
    ]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


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
