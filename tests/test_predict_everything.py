"""`python -m sam_train.cli.predict CKPT --image IMG --everything`: a picture and COCO RLE
records of every mask; bad settings stop with one line and exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_sam
from PIL import Image

from sam_train.automatic.mask_ops import decode_rle
from sam_train.cli.predict import main as predict_main
from sam_train.weights.safetensors_io import save_weights


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    sam = tiny_sam()
    ckpt = tmp_path / "sam.safetensors"
    save_weights(ckpt, sam.state_dict(), {"architecture": sam.architecture})
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 60, 3), dtype=np.uint8)).save(
        image
    )
    return ckpt, image


def test_everything_writes_a_picture_and_the_masks(files, tmp_path, capsys) -> None:
    ckpt, image = files
    out = tmp_path / "masks.png"
    settings = ["points_per_side=4", "pred_iou_thresh=0", "stability_score_thresh=0"]
    args = [str(ckpt), "--image", str(image), "--everything", "--out", str(out)]
    assert predict_main(args + [a for s in settings for a in ("--amg", s)]) == 0
    records = json.loads(out.with_suffix(".json").read_text())
    assert len(records) > 0 and f"{len(records)} mask" in capsys.readouterr().out
    for r in records:
        mask = decode_rle(r["segmentation"])
        assert mask.shape == (48, 60) and mask.sum() == r["area"]
    h, w, _ = np.asarray(Image.open(out)).shape
    assert w == 120 and h >= 48  # photo | masks, under a caption


@pytest.mark.parametrize(
    "setting, message",
    [("points_per_side=0", "points_per_side=0"), ("crop_n_layers=4", "too small for crop")],
)
def test_bad_settings_exit_2_with_one_line(files, tmp_path, capsys, setting, message) -> None:
    ckpt, image = files
    out = tmp_path / "masks.png"
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(ckpt), "--image", str(image), "--everything", "--amg", setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


def test_everything_says_how_many_masks_each_stage_kept(files, tmp_path, capsys) -> None:
    ckpt, image = files
    out = tmp_path / "masks.png"
    settings = ["points_per_side=4", "pred_iou_thresh=0", "stability_score_thresh=0"]
    args = [str(ckpt), "--image", str(image), "--everything", "--out", str(out)]
    assert predict_main(args + [a for s in settings for a in ("--amg", s)]) == 0
    records = json.loads(out.with_suffix(".json").read_text())
    stages = capsys.readouterr().out.splitlines()[0]
    assert stages.startswith("sam-predict: points 16 -> predicted 48 -> pred_iou_thresh 0: 48")
    assert stages.endswith(f"min_mask_region_area 0: {len(records)}")


def test_zero_masks_name_the_filter_that_removed_them(files, tmp_path, capsys) -> None:
    """A random model at the default thresholds: every mask fails the predicted-IoU filter,
    and the line says so with the setting to lower."""
    ckpt, image = files
    out = tmp_path / "masks.png"
    args = [str(ckpt), "--image", str(image), "--everything", "--out", str(out)]
    assert predict_main(args + ["--amg", "points_per_side=4"]) == 0
    text = capsys.readouterr().out
    assert "pred_iou_thresh 0.88: 0" in text and "--amg pred_iou_thresh=0.5" in text
    assert "0 masks" in text


def test_the_everything_picture_fills_hundreds_of_masks_in_distinct_colours() -> None:
    from sam_train.viz.everything import draw_everything

    image = np.full((200, 250, 3), 128, np.uint8)
    masks = []
    for i in range(250):  # 250 disjoint 8 x 8 squares
        m = np.zeros((200, 250), bool)
        y, x = 10 * (i // 25), 10 * (i % 25)
        m[y + 1 : y + 9, x + 1 : x + 9] = True
        masks.append(m)
    picture = draw_everything(image, masks)
    right = picture[:200, 250:]
    centres = {tuple(right[10 * (i // 25) + 5, 10 * (i % 25) + 5]) for i in range(250)}
    assert len(centres) >= 240  # each mask its own fill
    assert tuple(right[1, 1]) == (20, 20, 20)  # outlined
    assert tuple(right[0, 0]) == (128, 128, 128)  # outside every mask: the photo
    assert np.array_equal(picture[:200, :250], image)  # the photo beside it, untouched
