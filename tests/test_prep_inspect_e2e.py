"""`sam-prep inspect` counts what the shards hold; `sam-prep masks` -> `sam-train stage=sam`
runs end to end on a label-image folder (each tool in this process)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import SAM_TINY, call_main, run_output, train_in_process
from formats_helpers import save_label
from PIL import Image
from prep_helpers import write_image

from sam_train.cli import prep as prep_cli


@pytest.fixture(scope="module")
def label_folder(tmp_path_factory):
    """6 photos-like images, 64 x 48, with 1..3 rectangular objects each, and one without."""
    root = tmp_path_factory.mktemp("labels")
    for i in range(6):
        write_image(root / "imgs" / f"im{i}.png", 64, 48, seed=i)
        label = np.zeros((48, 64), dtype=np.uint16)
        for k in range(1 + i % 3):
            label[4 + 14 * k : 14 + 14 * k, 5 + 9 * k : 25 + 9 * k] = k + 1
        save_label(root / "labels" / f"im{i}.png", label)
    write_image(root / "imgs" / "empty.png", 64, 48, seed=9)
    return root


def test_inspect_prints_counts_and_writes_an_overlay(label_folder, tmp_path, capfd):
    out = tmp_path / "shards"
    args = [
        "masks", "--images", str(label_folder / "imgs"), "--masks", str(label_folder / "labels"),
        str(out), "--workers", "1", "--no-progress", "--maxcount", "4",
    ]  # fmt: skip
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 0, res.stderr
    res = call_main(prep_cli.main, ["inspect", str(out), "--json", "--samples", "3"], capfd)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert stats["samples"] == 6 and stats["masks"] == 12
    assert stats["masks_per_image"] == {"min": 1, "median": 2.0, "max": 3}
    assert stats["mask_area_px"]["min"] == stats["mask_area_px"]["max"] == 200
    assert stats["skipped"] == {"image_without_masks": 1}
    assert stats["categories"] == {"(none)": 12}
    overlay = Image.open(out / "inspect.png")
    assert overlay.size == (3 * 256, 256)
    text = call_main(prep_cli.main, ["inspect", str(out)], capfd).stdout
    assert "masks per image  min 1  median 2  max 3" in text
    assert "image_without_masks" in text
    res = call_main(prep_cli.main, ["inspect", str(tmp_path / "nowhere")], capfd)
    assert res.returncode == 2 and "manifest.json" in res.stderr


def _train(tmp_path, run, *data: str) -> str:
    """A stage-2 run on the shards, in this process: what it printed, logged and warned."""
    overrides = [
        "stage=sam",
        "data=shards_sam",
        *data,
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.batch_size=2",
        "data.shuffle_buffer=8",
        *SAM_TINY,
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    with run_output() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_in_process(overrides, run)
    return out.getvalue() + "".join(f"{w.message}\n" for w in caught)


@pytest.mark.slow
def test_label_images_to_sam_training_end_to_end(label_folder, tmp_path, capfd):
    """The own-data journey of docs/your_data.md: convert with a validation split, train."""
    out = tmp_path / "shards"
    args = [
        "masks", "--images", str(label_folder / "imgs"), "--masks", str(label_folder / "labels"),
        str(out), "--workers", "1", "--no-progress", "--val-fraction", "0.34",
    ]  # fmt: skip
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 0, res.stderr
    assert "train: wrote 4 samples" in res.stdout and "val: wrote 2 samples" in res.stdout
    run = tmp_path / "run"
    text = _train(tmp_path, run, f"data.path={out / 'train'}", f"data.val_path={out / 'val'}")
    assert "no validation data" not in text
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "train/loss_dice" in metrics.splitlines()[0] and "val/miou_box" in metrics
    # without validation data: one line says so at start, and the run goes on
    text = _train(tmp_path, tmp_path / "run2", f"data.path={out / 'train'}", "trainer.max_steps=1")
    notices = [line for line in text.splitlines() if "no validation data" in line]
    assert len(notices) == 1 and "data.val_path" in notices[0]
    assert "across ranks is zero" not in text
