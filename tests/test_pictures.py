"""What the training pictures show: MAE reconstructions that are the model's own, SAM tiles
that pair each prompt with its mask across several images, and the `predict` picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amg_helpers import shapes_on_noise
from conftest import tiny_mae, tiny_sam

from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from sam_train.viz.mae_grid import mae_reconstruction_grid, visible_pixels
from sam_train.viz.sam_masks import GT_COLOUR, PRED_COLOUR, PROMPT_COLOUR, mask_tile, tile_grid
from sam_train.viz.sam_predictions import (
    box_rows,
    draw_predictions,
    one_prompt_rows,
    spread_over_images,
)


def zero_predicting_mae(norm_pix_loss: bool = True):
    """A tiny MAE whose decoder predicts exactly zero for every patch."""
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss=norm_pix_loss)
    torch.nn.init.zeros_(mae.decoder_pred.weight)
    torch.nn.init.zeros_(mae.decoder_pred.bias)
    return mae


def structured_images(n: int = 2, size: int = 32) -> torch.Tensor:
    """Images with strong structure: stripes and a bright square (normalised values)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([torch.sin(xx / 2.0), torch.cos(yy / 3.0), (xx > yy).float() * 2 - 1])
    img[:, 8:20, 10:22] = 2.0
    return img[None].repeat(n, 1, 1, 1) * torch.linspace(0.5, 1.0, n)[:, None, None, None]


def test_a_model_that_predicts_zeros_draws_no_structure_where_patches_are_hidden() -> None:
    mae, images = zero_predicting_mae(), structured_images()
    _, pred, mask = mae(images, noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(pred, torch.zeros_like(pred))
    pixels = visible_pixels(mae, images, pred, mask)  # [N, L, p*p*C]
    # one flat colour per image: no edge, stripe or square of the hidden image shows through
    per_image = pixels.reshape(2, 16, -1, 3)  # [N, L, p*p, C]
    assert torch.allclose(per_image, per_image[:, :1, :1], atol=1e-6)
    # the old rendering (each hidden patch un-normalised with its own statistics) drew it all
    flattering = mae.pred_to_pixels(images, pred)[mask.bool()]
    assert flattering.std() > 0.3


def test_the_colour_comes_from_visible_patches_only() -> None:
    mae, images = zero_predicting_mae(), structured_images(1)
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(1))
    _, pred, mask = mae(images, noise=noise)
    changed = images.clone()
    patches = mae.patchify(changed)
    patches[mask.bool()] = 5.0  # change only what is hidden
    changed = mae.unpatchify(patches)
    assert torch.equal(
        visible_pixels(mae, images, pred, mask), visible_pixels(mae, changed, pred, mask)
    )


def test_without_patch_normalisation_the_prediction_is_drawn_as_is() -> None:
    mae, images = zero_predicting_mae(norm_pix_loss=False), structured_images(1)
    _, pred, mask = mae(images)
    assert torch.equal(visible_pixels(mae, images, pred, mask), pred)


def test_reconstruction_grid_has_a_title_and_labelled_columns() -> None:
    mae, images = zero_predicting_mae(), structured_images(3)
    plain = mae_reconstruction_grid(mae, images)
    titled = mae_reconstruction_grid(mae, images, title="epoch 3, step 12")
    assert plain.shape[1] == 4 * 32 and plain.shape[0] > 3 * 32  # a label strip on top
    assert titled.shape[0] > plain.shape[0]  # and a title above it
    body = plain[-3 * 32 :]
    # column 3 (reconstruction) of a zero prediction: one flat colour per image row
    recon = body[:32, 2 * 32 : 3 * 32].reshape(-1, 3)
    assert (recon == recon[0]).all()


def test_tiles_show_the_real_image_only_with_both_outlines_and_the_iou() -> None:
    batch = shapes_on_noise(1)
    gt = batch.masks[0, 0]
    pred = batch.masks[0, 1]
    tile = mask_tile(batch.images[0], gt, pred, (32, 64), iou=0.25, height=64)
    assert tile.shape == (64, 128, 3)  # 32 x 64 real image, padding cut off, scaled x2
    colours = {tuple(c) for c in tile.reshape(-1, 3)}
    assert tuple(GT_COLOUR) in colours and tuple(PRED_COLOUR) in colours


def test_picture_tiles_come_from_several_images() -> None:
    batches = [shapes_on_noise(2, seed=0), shapes_on_noise(2, seed=1)]
    picks = spread_over_images(batches, num_masks=6)
    assert len(picks) == 6
    assert len({(b, i) for b, i, _ in picks}) == 4  # every image of both batches
    rows = one_prompt_rows(tiny_sam(), batches, num_masks=4)
    assert [len(tiles) for _, tiles in rows] == [4, 4]
    assert "point" in rows[0][0] and "box" in rows[1][0]


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_predict_picture_draws_the_prompt(prompt: str) -> None:
    image = np.full((60, 80, 3), 120, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:60] = True
    given = (
        dict(point_coords=np.array([[45.0, 30.0]]), point_labels=np.array([1]))
        if prompt == "point"
        else dict(box=np.array([10.0, 5.0, 70.0, 55.0]))
    )
    empty = draw_predictions(image, [(given, np.zeros_like(mask))])
    right = empty[:60, 80:]
    assert (right != 120).any(axis=-1).sum() > 20  # the prompt is drawn even with no mask
    if prompt == "box":
        assert (right[5, 10:70] != 120).any(axis=-1).all()  # the box's top edge


def _grey_batch(level: float = 0.5):
    """shapes_on_noise's masks on one flat grey image, `level` in the model input's units."""
    batch = shapes_on_noise(1)
    batch.images = torch.full_like(batch.images, level)
    return batch


def _background(tile: np.ndarray) -> tuple[int, ...]:
    """The tile's bottom-right pixel: away from the masks, the prompt and the labels."""
    return tuple(int(v) for v in tile[-2, -2])


def test_a_min_max_tile_shows_the_pixels_the_model_saw() -> None:
    batch = _grey_batch(0.5)  # min-max input: 0.5 is mid grey, nothing to undo
    gt, pred = batch.masks[0, 0], batch.masks[0, 1]
    tile = mask_tile(batch.images[0], gt, pred, (64, 64), height=64, pixel_norm="min_max")
    assert _background(tile) == (128, 128, 128)
    imagenet = mask_tile(batch.images[0], gt, pred, (64, 64), height=64)  # 0.5 sd above mean
    expected = [round((0.5 * s + m) * 255) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert list(_background(imagenet)) == expected


@pytest.mark.parametrize("pixel_norm", ["imagenet", "min_max"])
def test_picture_rows_draw_the_image_the_models_way(pixel_norm: str, monkeypatch) -> None:
    batch = _grey_batch(0.5)
    sam = tiny_sam(pixel_norm=pixel_norm)
    # empty predictions: the image shows everywhere but the outlines
    monkeypatch.setattr(type(sam), "mask_threshold", 1e9)
    rows = one_prompt_rows(sam, [batch], num_masks=2)
    rows += box_rows([("before", sam), ("after", sam)], [batch], num_masks=2)
    grey = (
        0.5
        if pixel_norm == "min_max"
        else [0.5 * s + m for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    )
    expected = tuple(round(v * 255) for v in np.broadcast_to(grey, 3))
    for _, tiles in rows:
        assert [_background(t) for t in tiles] == [expected] * 2


def test_before_after_rows_show_each_model_on_the_same_masks() -> None:
    batches = [shapes_on_noise(2, seed=0)]
    before, after = tiny_sam(seed=0), tiny_sam(seed=1)
    rows = box_rows([("zero-shot", before), ("fine-tuned", after)], batches, num_masks=3)
    assert [label for label, _ in rows] == ["zero-shot: one box", "fine-tuned: one box"]
    assert [len(tiles) for _, tiles in rows] == [3, 3]
    # the same masks and boxes, different predictions: the ground-truth outline and the box
    # are drawn in both rows, the tiles differ where the predictions do
    for a, b in zip(*(tiles for _, tiles in rows)):
        assert a.shape == b.shape
        for colour in (GT_COLOUR, PROMPT_COLOUR):
            assert (a == colour).all(-1).any() and (b == colour).all(-1).any()
    assert any(not np.array_equal(a, b) for a, b in zip(*(tiles for _, tiles in rows)))
    page = tile_grid(rows, "held-out tiles")
    assert page.shape[1] >= 3 * rows[0][1][0].shape[1]


def test_models_that_prepare_images_differently_are_not_compared() -> None:
    with pytest.raises(ValueError, match="prepare images differently"):
        box_rows([("a", tiny_sam()), ("b", tiny_sam(pixel_norm="min_max"))],
                 [shapes_on_noise(1)], num_masks=1)  # fmt: skip


def test_the_legend_lists_only_the_prompt_marks_a_page_draws() -> None:
    from sam_train.viz.sam_masks import NEGATIVE_COLOUR, legend

    def has(strip: np.ndarray, colour) -> bool:
        return bool((strip == colour).all(-1).any())

    everything, boxes = legend(600), legend(600, prompts=("box",))
    assert has(everything, NEGATIVE_COLOUR) and has(everything, PROMPT_COLOUR)
    assert not has(boxes, NEGATIVE_COLOUR)  # no background-click marker
    assert has(boxes, PROMPT_COLOUR) and has(boxes, GT_COLOUR) and has(boxes, PRED_COLOUR)
    with pytest.raises(ValueError, match="unknown prompt marks"):
        legend(600, prompts=("lasso",))
