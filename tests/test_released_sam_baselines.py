"""The prompt-only baselines of benchmarks/released_sam.py: the filled box scores a mask's share
of its box; Otsu plus the component under the click finds a flat object of either polarity and
only the object clicked."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "released_sam", REPO / "benchmarks" / "released_sam.py"
)
released_sam = importlib.util.module_from_spec(spec)
spec.loader.exec_module(released_sam)


def discs(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint discs [2, size, size] bool."""
    yy, xx = np.mgrid[:size, :size]
    return np.stack([(xx - 18) ** 2 + (yy - 20) ** 2 < 100, (xx - 44) ** 2 + (yy - 42) ** 2 < 144])


def test_the_filled_box_scores_the_masks_share_of_its_box() -> None:
    rect = np.zeros((32, 32), bool)
    rect[4:10, 8:20] = True
    assert released_sam.filled_box_iou(rect) == 1.0
    yy, xx = np.mgrid[:256, :256]
    disc = (xx - 128) ** 2 + (yy - 128) ** 2 <= 100**2
    assert released_sam.filled_box_iou(disc) == pytest.approx(np.pi / 4, abs=0.01)


@pytest.mark.parametrize("bright_objects", [True, False])
def test_otsu_finds_the_clicked_object_of_either_polarity(bright_objects: bool) -> None:
    masks = discs()
    rng = np.random.default_rng(0)
    image = np.where(masks.any(0), 180, 60) + rng.integers(-20, 20, masks.shape[1:])
    grey = (image if bright_objects else 255 - image).astype(np.uint8)
    for mask in masks:  # the component under each click is that disc alone
        assert released_sam.otsu_click_iou(grey, mask) == 1.0
    half = masks[1].copy()
    half[:, :44] = False  # a target that is half the object: the component overshoots
    assert released_sam.otsu_click_iou(grey, half) == pytest.approx(half.sum() / masks[1].sum())
