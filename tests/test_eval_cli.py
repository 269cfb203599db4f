"""`sam-eval`: validation's figures for a checkpoint from the command line, segment-everything
recall, eval.json and plots; bad input stops with one line and exit code 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import SAM_TINY, console_script, tiny_mae, tiny_sam

from sam_train.cli.eval import main as eval_main
from sam_train.weights.checkpoints import file_sha256
from sam_train.weights.safetensors_io import save_weights


def last_validation(metrics_csv) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/miou_box")]
    return {
        k.removeprefix("val/"): float(v) for k, v in rows[-1].items() if k.startswith("val/") and v
    }


@pytest.mark.slow
def test_sam_eval_gives_the_training_runs_validation_figures(tmp_path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    train = subprocess.run(
        [console_script("sam-train"), "stage=sam", *SAM_TINY, f"hydra.run.dir={run}",
         f"paths.cache_dir={cache}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    res = subprocess.run(
        [console_script("sam-eval"), str(ckpt), f"paths.cache_dir={cache}",
         f"eval.out_dir={out}", "+eval.everything.points_per_side=4",
         "+eval.everything.pred_iou_thresh=0", "+eval.everything.stability_score_thresh=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    figures = report["figures"]

    trained = last_validation(run / "csv" / "metrics.csv")
    same = [k for k in trained if k.startswith(("miou_", "noc"))]
    assert {"miou_point_confident", "miou_box", "miou_click_3", "noc90"} <= set(same)
    for name in same:
        assert figures[name] == pytest.approx(trained[name], abs=1e-5), name

    assert report["checkpoint"]["sha256"] == file_sha256(ckpt)
    assert report["config"]["eval"]["tasks"] == ["point", "box", "clicks", "everything"]
    assert report["num_masks"] > 0
    for name in ("miou_random_point_confident", "ar100", "ar1000", "masks_per_image"):
        assert name in figures, name
    assert 0 <= figures["ar100"] <= figures["ar1000"] <= 1
    assert figures["masks_per_image"] > 0
    for picture in ("click_curve.png", "iou_histogram.png", "worst_cases.png"):
        assert (out / picture).stat().st_size > 1000, picture
    assert "miou_point_confident" in res.stdout  # the table


@pytest.fixture
def sam_file(tmp_path):
    sam = tiny_sam()
    path = tmp_path / "sam.safetensors"
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return path


def run_eval(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`sam-eval ARGS` in this process (Hydra, config checks and all): exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["sam-eval"])
    out_dir = next(a for a in args if a.startswith("eval.out_dir=")).partition("=")[2]
    with pytest.raises(SystemExit) as exit_info:
        eval_main([*args, f"hydra.run.dir={out_dir}_hydra"])
    err = capsys.readouterr().err
    print(err)
    return exit_info.value.code, err


def test_a_checkpoint_that_is_not_a_sam_is_refused(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "mae.pth"
    torch.save(tiny_mae().state_dict(), path)
    code, err = run_eval(monkeypatch, capsys, str(path), f"eval.out_dir={tmp_path / 'out'}")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("sam-eval: error:") and "not a SAM" in err
    assert not (tmp_path / "out").exists()


def test_points_per_side_zero_is_refused(sam_file, tmp_path, monkeypatch, capsys) -> None:
    code, err = run_eval(
        monkeypatch, capsys, str(sam_file), "+eval.everything.points_per_side=0",
        f"eval.out_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert code == 2 and "points_per_side=0" in err


def test_crops_too_small_for_the_images_are_refused(sam_file, tmp_path, monkeypatch, capsys):
    code, err = run_eval(
        monkeypatch, capsys, str(sam_file), "+eval.everything.points_per_side=4",
        "+eval.everything.crop_n_layers=5", f"eval.out_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert code == 2 and "too small for crop_n_layers=5" in err and "crop_n_layers=" in err


def test_data_without_masks_is_refused(sam_file, tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    from sam_train.cli.prep import main as prep_main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (i * 90, 40, 200)).save(images / f"{i}.jpg")
    prep_main(["images", str(images), str(tmp_path / "shards")])  # stage-1 shards: no masks
    code, err = run_eval(
        monkeypatch, capsys, str(sam_file), "data=coco", f"data.val_path={tmp_path / 'shards'}",
        "data.num_workers=0", f"eval.out_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert code == 2 and "image-only shards" in err  # refused before anything runs
    code, err = run_eval(
        monkeypatch, capsys, str(sam_file), "data=coco", f"data.val_path={tmp_path / 'none'}",
        f"eval.out_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_an_official_sam_checkpoint_is_evaluated(sam_file, tmp_path, monkeypatch, capsys):
    from sam_train.weights.export import export

    official = export(sam_file, "sam", tmp_path / "sam_official.pth")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["sam-eval"])
    eval_main(
        [str(official), "eval.tasks=[point,box]", f"eval.out_dir={out}",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    )  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert report["checkpoint"]["sha256"] == file_sha256(official)
    assert {"miou_point_confident", "miou_random_point_oracle", "miou_box"} <= set(
        report["figures"]
    )
    assert not any(k.startswith(("miou_click", "ar")) for k in report["figures"])
    # no data given: the bundled sample is scored, and both the console and eval.json say so
    out_text = capsys.readouterr().out
    assert "[sam-eval] scoring the bundled sample's validation images" in out_text
    assert report["data"]["group"] == "sam_sample" and report["data"]["val_path"] is None
    masks = report["data"]["masks"]
    assert masks["scored"] == report["num_masks"]
    assert masks["read"] == masks["scored"] + sum(masks["left_out"].values())
    assert f"masks: {masks['read']} read, {masks['scored']} scored" in out_text


def test_eval_says_which_masks_it_scored_and_why_it_left_others_out(
    sam_file, tmp_path, monkeypatch, capsys
):
    import numpy as np
    from formats_helpers import save_label
    from prep_helpers import write_image

    from data_prep.masks import convert_masks
    from data_prep.shard_writer import ShardOptions

    for i in range(2):
        write_image(tmp_path / "imgs" / f"p{i}.png", 64, 64, seed=i)
        label = np.zeros((64, 64), np.uint8)
        label[4:30, 4:30] = 1  # scored
        label[40:60, 36:60] = 2  # scored
        label[2:4, 50:52] = 3  # 4 pixels: below the area filter
        save_label(tmp_path / "labels" / f"p{i}.png", label)
    shards = tmp_path / "shards"
    convert_masks(tmp_path / "imgs", tmp_path / "labels", shards, ShardOptions(progress=False))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["sam-eval"])
    eval_main(
        [str(sam_file), "data=shards_sam", f"data.val_path={shards}", "data.num_workers=0",
         "eval.tasks=[point]", "eval.min_mask_area=16", f"eval.out_dir={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}"]
    )  # fmt: skip
    text = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["data"]["val_path"] == str(shards)
    assert f"[sam-eval] scoring {shards} (data=shards_sam)" in text
    masks = report["data"]["masks"]
    assert masks["read"] == 6 and masks["scored"] == 4
    assert masks["left_out"] == {"below_min_mask_area": 2}
    assert "masks: 6 read, 4 scored; left out: 2 below_min_mask_area (eval.min_mask_area)" in text


def test_eval_help_names_the_checkpoint_argument_and_the_eval_options(capsys):
    eval_main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: sam-eval CHECKPOINT [group=option ...] [key=value ...]")
    assert "Hydra overrides, not --flags" in text
    assert "CHECKPOINT, the first argument" in text and "val_max_masks" in text
    assert "data=shards_sam data.val_path=DIR" in text and "code_defaults" not in text
