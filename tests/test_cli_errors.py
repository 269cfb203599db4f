"""Mistakes a user can make with sam-train, sam-predict and sam-export: each is one line on
stderr naming the problem, exit code 2, no traceback, and no run folder left behind.

Most cases call each tool's `main` in this process (the console script is a one-line shim
around it; a subprocess per case costs ~10 s on a loaded 2-core machine); a few run the
installed console scripts to pin the real exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import console_script, tiny_mae, tiny_sam, train_stage1_checkpoint
from PIL import Image
from test_cli_mae import TINY

from sam_train.cli import export as export_cli
from sam_train.cli import predict as predict_cli
from sam_train.cli import train as train_cli
from sam_train.weights.safetensors_io import save_weights


def run(tool: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [console_script(tool), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SAM_TRAIN_OUTPUT": str(cwd / "outputs")},
    )


def call_main(main, argv: list[str], capfd) -> SimpleNamespace:
    """A tool's `main` in this process: its exit code and what it printed."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def sam_train_main(argv: list[str]) -> int:
    sys.argv = ["sam-train", *argv]
    train_cli.main()
    return 0


def assert_one_line_error(res: subprocess.CompletedProcess, tool: str, *fragments: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith(f"{tool}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert "weights_only" not in line  # torch's advice to unpickle code is not repeated
    return line


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real stage-1 checkpoint, a stage-2 one, a SAM export, an image, and bad files."""
    d = tmp_path_factory.mktemp("files")
    mae_ckpt = train_stage1_checkpoint(d / "mae.ckpt", tiny_mae(), 1, run_config={"x": 1})
    raw = mae_ckpt.read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(2000))
    (d / "empty.ckpt").write_bytes(b"")
    (d / "notes.txt").write_text("not weights\n" * 20)
    torch.save({"x": Path("/tmp")}, d / "pickled_object.pt")  # unpickling it would run code
    sam = tiny_sam()
    # the shape of a stage-2 Lightning checkpoint (what sam-train stage=sam writes)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in sam.state_dict().items()},
            "sam_train": {"stage": "sam", "architecture": sam.architecture},
            "global_step": 3,
        },
        d / "sam.ckpt",
    )
    save_weights(d / "sam.safetensors", sam.state_dict(), {"architecture": sam.architecture})
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(d / "photo.png")
    return {p.stem if p.suffix != ".safetensors" else "sam_export": p for p in d.iterdir()}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["ckpt_path={empty}"], ["empty.ckpt", "is empty"]),
        (["ckpt_path={truncated}"], ["truncated.ckpt", "truncated or corrupt"]),
        (["ckpt_path={garbage}"], ["garbage.ckpt", "not a PyTorch checkpoint"]),
        (["ckpt_path={notes}"], ["notes.txt", "text file"]),
        (["ckpt_path={pickled_object}"], ["Python objects besides tensors"]),
        (["ckpt_path=/no/such.ckpt"], ["/no/such.ckpt", "does not exist"]),
        (["ckpt_path=last"], ["ckpt_path=last", "no run"]),
        (["stage=mae", "ckpt_path={sam}"], ["stage-2 (sam) checkpoint", "stage=mae"]),
        (["stage=sam", "ckpt_path={mae}"], ["stage-1 (mae) checkpoint", "model.init_from="]),
        (["stage=mae", "ckpt_path={mae}"], ["other options", "model options"]),
        (["stage=sam", "model.init_from={notes}"], ["notes.txt", "text file"]),
        (["stage=sam", "model.init_from={garbage}"], ["garbage.ckpt", "not a PyTorch"]),
        (["trainer.precision=bf16-mixed"], ["trainer.precision=bf16-mixed on a CPU"]),
        (["model.mask_ratio=1.5"], ["mask_ratio must lie strictly between 0 and 1"]),
        (["trainer.max_epochs=abc"], ["trainer.max_epochs=abc: expected an integer"]),
        (["optim.lr=fast"], ["optim.lr=fast: expected a number"]),
        (["data.batch_size=2.5"], ["data.batch_size=2.5: expected an integer"]),
    ],
)
def test_sam_train_user_errors(tmp_path, files, args, fragments, monkeypatch, capfd):
    args = [a.format(**files) for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # restored after the test
    tiny = TINY if "stage=sam" not in args else []
    res = call_main(sam_train_main, [*tiny, *args], capfd)
    line = assert_one_line_error(res, "sam-train", *fragments)
    assert len(line) < 400  # a sentence, not a list of keys
    assert not (tmp_path / "outputs").exists(), "a run that never started left a folder"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["ckpt_path={garbage}"], ["not a PyTorch checkpoint"]),
        (["trainer.precision=bf16-mixed"], ["bf16-mixed on a CPU"]),
    ],
)
def test_sam_train_console_script_exits_2_with_one_line(tmp_path, files, args, fragments):
    res = run("sam-train", [a.format(**files) for a in args], tmp_path)
    assert_one_line_error(res, "sam-train", *fragments)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--image", "{photo}", "--point", "300"], ["point '300' is not x,y"]),
        (["--image", "{photo}", "--point", "a,b"], ["point 'a,b' is not x,y"]),
        (["--image", "{photo}", "--point", "5000,-300"], ["outside the 60x40 image"]),
        (["--image", "{photo}", "--point", "60,10"], ["outside the 60x40 image"]),
        (["--image", "{photo}", "--box", "1,2,3"], ["box '1,2,3' is not x0,y0,x1,y1"]),
        (["--image", "{photo}", "--box", "30,20,10,5"], ["is empty"]),
        (["--image", "{photo}", "--box", "0,0,100,30"], ["reaches outside the 60x40 image"]),
        (["--image", "missing.jpg", "--point", "3,4"], ["missing.jpg does not exist"]),
        (["--image", "{notes}", "--point", "3,4"], ["notes.txt is not an image"]),
        (["--image", "{photo}"], ["no prompts"]),
        ([], ["exactly one of --image or --sample"]),
    ],
)
def test_sam_predict_user_errors(tmp_path, files, args, fragments, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    args = [a.format(**files) for a in args]
    res = call_main(predict_cli.main, [str(files["sam_export"]), *args], capfd)
    assert_one_line_error(res, "sam-predict", *fragments)
    assert not (tmp_path / "prediction.png").exists()


@pytest.mark.parametrize(
    "checkpoint, fragments",
    [
        ("{garbage}", ["not a PyTorch checkpoint"]),
        ("{truncated}", ["truncated or corrupt"]),
        ("{mae}", ["not a SAM"]),
        ("nothing.pth", ["does not exist"]),
    ],
)
def test_sam_predict_bad_checkpoints(tmp_path, files, checkpoint, fragments, capfd):
    argv = [checkpoint.format(**files), "--image", str(files["photo"]), "--point", "3,4"]
    res = call_main(predict_cli.main, argv, capfd)
    assert_one_line_error(res, "sam-predict", *fragments)


@pytest.mark.slow
def test_sam_predict_console_script_exits_2_on_a_click_outside_the_image(tmp_path, files):
    args = [files["sam_export"], "--image", files["photo"], "--point", "5000,-300"]
    res = run("sam-predict", args, tmp_path)
    assert_one_line_error(res, "sam-predict", "outside the 60x40 image")


@pytest.mark.slow
def test_sam_predict_console_script_predicts_one_mask(tmp_path, files):
    res = run(
        "sam-predict",
        [files["sam_export"], "--image", files["photo"], "--point", "59,39", "--out", "p.png"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 mask from 1 prompt ->" in res.stdout
    w, h = Image.open(tmp_path / "p.png").size
    assert w == 120 and h >= 40  # the photo and the prediction side by side, under a caption


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["{garbage}", "--format", "encoder"], ["not a PyTorch checkpoint"]),
        (["{sam_export}", "--format", "mae"], ["stage-1 (MAE) checkpoint"]),
        (["{mae}", "--format", "encoder", "--out", "{folder}"], ["cannot write"]),
        (["{mae}", "--format", "nonsense"], ["invalid choice: 'nonsense'"]),
        (["{mae}"], ["--format"]),
    ],
)
def test_sam_export_user_errors(tmp_path, files, args, fragments, capfd):
    (tmp_path / "folder").mkdir()
    args = [a.format(**files, folder=tmp_path / "folder") for a in args]
    res = call_main(export_cli.main, args, capfd)
    assert_one_line_error(res, "sam-export", *fragments)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["model.mask_ration=0.5"], ["model.mask_ration", "did you mean model.mask_ratio?"]),
        (["model=mae_vit_giant"], ["model/mae_vit_giant", "mae_vit_base"]),
        (["--help", "model=mae_vit_giant"], ["model/mae_vit_giant"]),
        (["optim.lr=1e-4,1e-3"], ["--multirun"]),
        (["trainer.max_step=2"], ["did you mean trainer.max_steps?"]),
        (["trainr.devices=1"], ["did you mean trainer.devices?"]),
        (["model.foo=1"], ["model.foo is not a config key", "model has: "]),
        # a path given to the embedded sample: never built there nor trained on
        (["stage=sam", "data.path=/nonexistent/shards"], ["data=sam_sample", "data=shards_sam"]),
        (["stage=mae", "data.root=/nonexistent/imgs"], ["data=sample", "data=images"]),
        (["stage=sam", "data=shards_sam", "data.path=/nonexistent/s"], ["does not exist"]),
        (["stage=sam", "data=shards_sam", "data.path=."], ["no shards in '.'"]),
        (["stage=mae", "data=shards_mae", "data.path=/nonexistent/s"], ["does not exist"]),
        (["stage=mae", "data=images", "data.root=/nonexistent/imgs"], ["not a folder"]),
        (
            ["stage=sam", "data=shards_sam", "data.path=.", "data.val_path=/nonexistent/v"],
            ["data.val_path", "data.path"],
        ),
    ],
)
def test_sam_train_override_mistakes(tmp_path, args, fragments, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    res = call_main(sam_train_main, args, capfd)
    assert_one_line_error(res, "sam-train", *fragments)
    assert not (tmp_path / "outputs").exists()


def test_sam_train_help_lists_groups_and_the_composed_config(monkeypatch, capfd):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    res = call_main(sam_train_main, ["--help", "stage=sam"], capfd)
    assert res.returncode == 0
    assert "sam-train: stage 1" in res.stdout  # conf/hydra/default.yaml's header
    assert "model: _mae, _sam, mae_vit_base" in res.stdout
    assert "hparams_search: mae_optuna" in res.stdout
    assert "name: sam" in res.stdout  # the composed config follows the overrides
    assert "hydra/launcher" not in res.stdout
