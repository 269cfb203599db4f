"""Mistakes a user can make with the six tools (sam-train, sam-prep, sam-export, sam-predict,
sam-eval, sam-app), as one corpus: each is one line on stderr naming the problem, exit code 2,
no traceback, and no file or folder left behind.

Most cases call each tool's `main` in this process (the console script is a one-line shim
around it; a subprocess per case costs ~10 s on a loaded 2-core machine); a few run the
installed console scripts to pin the real exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    MAE_TINY,
    assert_one_line_error,
    call_main,
    console_script,
    sam_train_main,
    tiny_mae,
    tiny_sam,
    train_stage1_checkpoint,
)
from PIL import Image

from sam_train.cli import app as app_cli
from sam_train.cli import eval as eval_cli
from sam_train.cli import export as export_cli
from sam_train.cli import predict as predict_cli
from sam_train.cli import prep as prep_cli
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


# ----------------------------------------------------------------------------- the corpus
# (tool, arguments, fragments the one error line must hold). "{name}" is a file of the `files`
# or `inputs` fixture, "{work}" the empty folder the tool runs in (it must stay empty).
# "sam-prep X" is sam-prep's subcommand X (its lines start "sam-prep X: error:").
SAM_PREP_MASKS = ["masks", "--images", "{imgs}", "--masks", "{labels}", "--no-progress"]
CORPUS = [
    # sam-train: resuming and initialising from files that cannot be used
    ("sam-train", [*MAE_TINY, "ckpt_path={empty}"], ["empty.ckpt", "is empty"]),
    ("sam-train", [*MAE_TINY, "ckpt_path={truncated}"], ["truncated.ckpt", "truncated or corrupt"]),
    ("sam-train", [*MAE_TINY, "ckpt_path={garbage}"], ["garbage.ckpt", "not a PyTorch checkpoint"]),
    ("sam-train", [*MAE_TINY, "ckpt_path={notes}"], ["notes.txt", "text file"]),
    ("sam-train", [*MAE_TINY, "ckpt_path={pickled_object}"], ["Python objects besides tensors"]),
    ("sam-train", [*MAE_TINY, "ckpt_path=/no/such.ckpt"], ["/no/such.ckpt", "does not exist"]),
    ("sam-train", [*MAE_TINY, "ckpt_path=last"], ["ckpt_path=last", "no run"]),
    ("sam-train", [*MAE_TINY, "stage=mae", "ckpt_path={sam}"], ["stage-2 (sam) checkpoint"]),
    ("sam-train", ["stage=sam", "ckpt_path={mae}"], ["stage-1 (mae) checkpoint", "init_from="]),
    ("sam-train", [*MAE_TINY, "stage=mae", "ckpt_path={mae}"], ["other options", "model options"]),
    ("sam-train", ["stage=sam", "model.init_from={notes}"], ["notes.txt", "text file"]),
    ("sam-train", ["stage=sam", "model.init_from={garbage}"], ["garbage.ckpt", "not a PyTorch"]),
    # sam-train: values and keys
    (
        "sam-train",
        [*MAE_TINY, "trainer.precision=16-mixed"],
        ["trainer.precision=16-mixed on a CPU", "fp16"],
    ),
    ("sam-train", [*MAE_TINY, "model.mask_ratio=1.5"], ["mask_ratio must lie strictly between"]),
    (
        "sam-train",
        [*MAE_TINY, "trainer.max_epochs=abc"],
        ["trainer.max_epochs=abc: expected an int"],
    ),
    ("sam-train", [*MAE_TINY, "optim.lr=fast"], ["optim.lr=fast: expected a number"]),
    ("sam-train", [*MAE_TINY, "data.batch_size=2.5"], ["data.batch_size=2.5: expected an integer"]),
    ("sam-train", ["model.mask_ration=0.5"], ["did you mean model.mask_ratio?"]),
    ("sam-train", ["model=mae_vit_giant"], ["model/mae_vit_giant", "mae_vit_base"]),
    ("sam-train", ["--help", "model=mae_vit_giant"], ["model/mae_vit_giant"]),
    ("sam-train", ["optim.lr=1e-4,1e-3"], ["--multirun"]),
    ("sam-train", ["trainer.max_step=2"], ["did you mean trainer.max_steps?"]),
    ("sam-train", ["trainr.devices=1"], ["did you mean trainer.devices?"]),
    ("sam-train", ["model.foo=1"], ["model.foo is not a config key", "model has: "]),
    ("sam-train", ["stage=sam", "model=mae_vit_tiny"], ["stage=sam with model=mae_vit_tiny"]),
    ("sam-train", ["stage=sam", "model.freeze=[decoder]"], ["'decoder' names no part"]),
    # sam-train: data paths (never the sample instead, never a run folder)
    (
        "sam-train",
        ["stage=sam", "data.path=/nonexistent/s"],
        ["data=sam_sample", "data=shards_sam"],
    ),
    ("sam-train", ["stage=mae", "data.root=/nonexistent/i"], ["data=sample", "data=images"]),
    ("sam-train", ["stage=sam", "data=shards_sam", "data.path=/nonexistent/s"], ["does not exist"]),
    ("sam-train", ["stage=sam", "data=shards_sam", "data.path={work}"], ["no shards in"]),
    ("sam-train", ["stage=sam", "data=shards_sam"], ["data.path"]),
    (
        "sam-train",
        ["-m", "stage=sam", "data=shards_sam", "data.path=/nonexistent/s", "seed=1,2"],
        ["does not exist"],
    ),  # a sweep: refused before its first trial
    ("sam-train", ["stage=sam", "data=shards_sam", "data.path={shards}"], ["image-only shards"]),
    ("sam-train", ["stage=mae", "data=shards_mae", "data.path=/nonexistent/s"], ["does not exist"]),
    ("sam-train", ["stage=mae", "data=images", "data.root=/nonexistent/i"], ["does not exist"]),
    (
        "sam-train",
        ["stage=mae", "data=shards_mae", "data.path={shards}", "data.val_path=/nonexistent/v"],
        ["data.val_path", "does not exist"],
    ),
    # sam-predict
    ("sam-predict", ["{sam_export}", "--image", "{photo}", "--point", "300"], ["is not x,y"]),
    ("sam-predict", ["{sam_export}", "--image", "{photo}", "--point", "a,b"], ["'a,b' is not x,y"]),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--point", "5000,-300"],
        ["outside the 60x40"],
    ),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--point", "60,10"],
        ["outside the 60x40"],
    ),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--box", "1,2,3"],
        ["is not x0,y0,x1,y1"],
    ),
    ("sam-predict", ["{sam_export}", "--image", "{photo}", "--box", "30,20,10,5"], ["is empty"]),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--box", "0,0,100,30"],
        ["reaches outside"],
    ),
    (
        "sam-predict",
        ["{sam_export}", "--image", "missing.jpg", "--point", "3,4"],
        ["does not exist"],
    ),
    ("sam-predict", ["{sam_export}", "--image", "{notes}", "--point", "3,4"], ["is not an image"]),
    ("sam-predict", ["{sam_export}", "--image", "{photo}"], ["no prompts"]),
    ("sam-predict", ["{sam_export}"], ["exactly one of --image or --sample"]),
    (
        "sam-predict",
        ["{garbage}", "--image", "{photo}", "--point", "3,4"],
        ["not a PyTorch checkpoint"],
    ),
    (
        "sam-predict",
        ["{truncated}", "--image", "{photo}", "--point", "3,4"],
        ["truncated or corrupt"],
    ),
    ("sam-predict", ["{mae}", "--image", "{photo}", "--point", "3,4"], ["not a SAM"]),
    ("sam-predict", ["nothing.pth", "--image", "{photo}", "--point", "3,4"], ["does not exist"]),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--everything", "--amg", "points_per_side=0"],
        ["points_per_side=0"],
    ),
    (
        "sam-predict",
        ["{sam_export}", "--image", "{photo}", "--point", "3,4", "--device", "gpu0"],
        ["argument --device: 'gpu0' is not a device"],
    ),
    # sam-export
    ("sam-export", ["{garbage}", "--format", "encoder"], ["not a PyTorch checkpoint"]),
    ("sam-export", ["{sam_export}", "--format", "mae"], ["stage-1 (MAE) checkpoint"]),
    ("sam-export", ["{mae}", "--format", "encoder", "--out", "{notes}/x"], ["cannot write"]),
    ("sam-export", ["{mae}", "--format", "nonsense"], ["invalid choice: 'nonsense'"]),
    ("sam-export", ["{mae}"], ["--format"]),
    # sam-prep
    ("sam-prep", ["nonsense"], ["invalid choice: 'nonsense'"]),
    ("sam-prep masks", ["masks", "--images", "{imgs}", "{work}/out"], ["required: --masks"]),
    (
        "sam-prep masks",
        [*SAM_PREP_MASKS[:2], "/nonexistent/i", *SAM_PREP_MASKS[3:], "{work}/o"],
        ["image folder", "does not exist"],
    ),  # fmt: skip
    ("sam-prep masks", [*SAM_PREP_MASKS[:4], "/nonexistent/m", "{work}/o"], ["mask folder"]),
    ("sam-prep images", ["images", "{empty_dir}", "{work}/o"], ["no image files"]),
    (
        "sam-prep coco",
        ["coco", "--images", "{imgs}", "--annotations", "{work}/no.json", "{work}/o"],
        ["does not exist"],
    ),  # fmt: skip
    (
        "sam-prep coco",
        ["coco", "--images", "{imgs}", "--annotations", "{notes}", "{work}/o"],
        ["cannot read COCO annotation file"],
    ),  # fmt: skip
    ("sam-prep masks", [*SAM_PREP_MASKS, "{work}/o", "--val-fraction", "1.5"], ["--val-fraction"]),
    ("sam-prep masks", [*SAM_PREP_MASKS, "{work}/o", "--val-images", "p9"], ["match no input"]),
    ("sam-prep masks", [*SAM_PREP_MASKS, "{work}/o", "--instances", "x"], ["invalid choice"]),
    ("sam-prep images", ["images", "{imgs}", "{shards}"], ["converted from", "--overwrite"]),
    ("sam-prep images", ["images", "{imgs}", "{work}/o", "--maxsize", "lots"], ["not a size"]),
    ("sam-prep images", ["images", "{imgs}", "{work}/o", "--maxcount", "0"], ["--maxcount 0"]),
    ("sam-prep images", ["images", "{imgs}", "{work}/o", "--quality", "500"], ["--quality 500"]),
    ("sam-prep images", ["images", "{imgs}", "{work}/o", "--normalize", "x"], ["--normalize"]),
    ("sam-prep images", ["images", "{imgs}", "{work}/o", "--tile", "8"], ["--tile 8 is too small"]),
    ("sam-prep sa1b", ["sa1b", "{empty_dir}", "{work}/o"], ["no SA-1B image files"]),
    (
        "sam-prep teacher-embed",
        ["teacher-embed", "{shards}", "{work}/o", "--teacher", "{notes}"],
        ["text file, not a checkpoint"],
    ),  # fmt: skip
    # sam-eval
    ("sam-eval", [], ["no checkpoint", "sam-eval CHECKPOINT"]),
    ("sam-eval", ["/nonexistent/sam.pth"], ["does not exist"]),
    ("sam-eval", ["{notes}"], ["text file, not a checkpoint"]),
    ("sam-eval", ["{mae}"], ["not a SAM"]),
    ("sam-eval", ["{sam_export}", "eval.taks=[point]"], ["did you mean eval.tasks?"]),
    (
        "sam-eval",
        ["{sam_export}", "data=shards_sam", "data.val_path=/nonexistent/v"],
        ["does not exist"],
    ),  # fmt: skip
    ("sam-eval", ["{sam_export}", "eval.tasks=[speed]"], ["eval.tasks", "choose from"]),
    # sam-app
    ("sam-app", ["/nonexistent/sam.pth"], ["does not exist"]),
    ("sam-app", ["{sam_export}", "--images", "{notes}"], ["is not a folder"]),
    ("sam-app", ["{sam_export}", "--decoder", "tensorrt"], ["invalid choice: 'tensorrt'"]),
    ("sam-app", ["{sam_export}", "--port", "{busy_port}"], ["cannot listen", "--port"]),
    ("sam-app", ["{sam_export}", "--device", "gpu0"], ["'gpu0' is not a device"]),
]


def sam_eval_main(argv: list[str]) -> int:
    eval_cli.main(argv)
    return 0


TOOLS = {
    "sam-train": sam_train_main,
    "sam-predict": predict_cli.main,
    "sam-export": export_cli.main,
    "sam-prep": prep_cli.main,
    "sam-eval": sam_eval_main,
    "sam-app": app_cli.main,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """sam-prep's inputs (two labelled images, an empty folder, shards of other images) and a
    port that is taken."""
    import socket

    from prep_helpers import write_image

    from data_prep.images import convert_images
    from data_prep.shard_writer import ShardOptions

    d = tmp_path_factory.mktemp("inputs")
    for i in range(2):
        write_image(d / "imgs" / f"p{i}.png", 40, 32, seed=i)
        label = np.zeros((32, 40), np.uint8)
        label[2:12, 3:20] = 1
        (d / "labels").mkdir(exist_ok=True)
        Image.fromarray(label).save(d / "labels" / f"p{i}.png")
    (d / "empty_dir").mkdir()
    write_image(d / "other" / "o.png", 24, 16, seed=9)
    convert_images(d / "other", d / "shards", ShardOptions(progress=False))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    yield {**{p.name: p for p in d.iterdir()}, "busy_port": busy.getsockname()[1]}
    busy.close()


def _tree(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for f in folders for p in sorted(f.rglob("*"))}


@pytest.mark.parametrize(
    "tool, args, fragments",
    CORPUS,
    ids=[f"{i:02d}-{t.replace(' ', '-')}-{f[0][:24]}" for i, (t, _, f) in enumerate(CORPUS)],
)
def test_bad_input_corpus(tool, args, fragments, tmp_path, files, inputs, monkeypatch, capfd):
    """Each mistake: exit 2, one line on stderr naming the problem, no traceback, and no file
    or folder left behind (in the folder it runs in, nor beside its inputs)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(work / "outputs"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # restored after the test
    argv = [str(a).format(**files, **inputs, work=work) for a in args]
    folders = [files["notes"].parent, inputs["imgs"].parent]
    before = _tree(*folders)
    res = call_main(TOOLS[tool.split()[0]], argv, capfd)
    line = assert_one_line_error(res, tool, *fragments)
    assert len(line) < 400  # a sentence, not a list of keys
    assert list(work.iterdir()) == [], "a run that never started left files"
    assert _tree(*folders) == before


def test_the_corpus_covers_every_tool_with_forty_mistakes():
    assert {t.split()[0] for t, _, _ in CORPUS} == set(TOOLS)
    assert len(CORPUS) >= 40


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["ckpt_path={garbage}"], ["not a PyTorch checkpoint"]),
        (["trainer.precision=16-mixed"], ["16-mixed on a CPU"]),
    ],
)
def test_sam_train_console_script_exits_2_with_one_line(tmp_path, files, args, fragments):
    res = run("sam-train", [a.format(**files) for a in args], tmp_path)
    assert_one_line_error(res, "sam-train", *fragments)
    assert not (tmp_path / "outputs").exists()


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


def test_sam_train_help_lists_groups_and_the_composed_config(monkeypatch, capfd):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    res = call_main(sam_train_main, ["--help", "stage=sam"], capfd)
    assert res.returncode == 0
    assert "sam-train: stage 1" in res.stdout  # conf/hydra/default.yaml's header
    model_line = next(line for line in res.stdout.splitlines() if line.startswith("model: "))
    assert "mae_vit_base" in model_line and "sam_vit_b" in model_line
    assert not any(o.startswith("_") for o in model_line[7:].split(", "))  # bases, not options
    assert "code_defaults" not in res.stdout
    assert "hparams_search: mae_optuna" in res.stdout
    assert "name: sam" in res.stdout  # the composed config follows the overrides
    assert "hydra/launcher" not in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("tool", ["sam-predict", "sam-app"])
def test_a_device_this_machine_lacks_is_refused_before_loading(tool, files, capfd, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    args = [str(files["sam_export"]), "--device", "cuda"]
    if tool == "sam-predict":
        args += ["--image", str(files["photo"]), "--point", "3,4"]
    res = call_main(TOOLS[tool], args, capfd)
    assert_one_line_error(res, tool, "--device: cuda: no CUDA GPU", "use --device cpu")


def test_sam_predict_runs_on_the_device_given(files, tmp_path, capfd):
    out = tmp_path / "p.png"
    args = [files["sam_export"], "--image", files["photo"], "--point", "3,4", "--device", "cpu"]
    res = call_main(predict_cli.main, [*map(str, args), "--out", str(out)], capfd)
    assert res.returncode == 0, res.stderr
    assert "1 mask from 1 prompt" in res.stdout and out.stat().st_size > 0
