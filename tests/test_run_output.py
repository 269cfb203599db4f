"""What a run prints and where it writes: no third-party noise, no best checkpoint claimed when
there is none, TensorBoard events when asked, and a resumed run continuing in its own folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import MAE_TINY, REPO, call_main, run_cli, sam_train_main

SHORT = [*MAE_TINY, "data.samples_per_epoch=8", "trainer.log_every_n_steps=1"]


def sam_train(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`sam-train stage=mae ARGS` as a user runs it from `cwd` (runs under cwd/outputs)."""
    return run_cli(
        "sam-train", "stage=mae", *args, cwd=cwd, env={"SAM_TRAIN_OUTPUT": str(cwd / "outputs")}
    )


def test_the_command_line_imports_no_torch_until_a_run_starts():
    """`sam-train --help` and config errors answer in a second or two: Lightning and torch
    (~10 s to import on a loaded machine) are imported only once a run starts."""
    code = (
        "import sys, sam_train.cli.train, sam_train.config_checks; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.slow
def test_short_run_then_resume_in_its_own_folder(tmp_path):
    first = tmp_path / "outputs" / "mae" / "first"
    # one step of a two-step epoch, checkpointed mid-epoch, and no validation at all (the
    # monitored val/loss never exists)
    res = sam_train(
        [
            *SHORT,
            "trainer.max_steps=1",
            "callbacks.last_checkpoint.every_n_train_steps=1",
            "trainer.limit_val_batches=0",
            "logger=[csv,tensorboard]",
            f"hydra.run.dir={first}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    printed = res.stdout + res.stderr
    assert "could not find the monitored key" not in printed
    assert "last.ckpt + best" not in printed and "no best: val/loss was never computed" in printed
    for noise in ("FLOPs", "LeafSpec", "litlogger", "weights_only"):
        assert noise not in printed, noise
    assert list((first / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["last.ckpt"]
    started = (first / ".hydra" / "config.yaml").read_text()

    # resumed from its last.ckpt without naming a folder: it continues in `first`
    res = sam_train(
        [
            *SHORT,
            "trainer.max_epochs=2",
            "callbacks.progress_bar.refresh_rate=1",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: {first}" in res.stdout
    assert [p.name for p in (tmp_path / "outputs" / "mae").iterdir()] == ["first"]
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    # the record of how the run was started is kept; the resumed part's config sits beside it
    assert (first / ".hydra" / "config.yaml").read_text() == started
    (resumed,) = (first / ".hydra").glob("resume-*/config.yaml")
    assert "max_epochs: 2" in resumed.read_text() and "max_epochs: 2" not in started
    assert not list((first / "checkpoints").glob("last-v*.ckpt"))
    with open(first / "csv" / "metrics.csv") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert steps == {0, 1, 2, 3}, "the first part's metrics were lost on resume"
    # the progress bar of the resumed (mid-epoch) run names the epoch it continues
    bar = (res.stdout + res.stderr).replace("\r", "\n")
    assert "Epoch 0: " in bar and "Epoch 1: " in bar


def test_help_imports_no_torch_and_writes_no_cache(tmp_path):
    """The config's code-default nodes are committed YAML: `sam-train --help` composes the
    config without importing torch or Lightning, from a cold start, and caches nothing."""
    code = (
        "import sys\n"
        "from sam_train.cli.train import main\n"
        "sys.argv = ['sam-train', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('imported:', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "stage=mae" in run.stdout and "code_defaults" not in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "imported: []"
    assert not (tmp_path / "cache").exists() and not (tmp_path / ".cache").exists()


@pytest.mark.slow
def test_resuming_from_an_earlier_checkpoint_logs_each_step_once(tmp_path, monkeypatch, capfd):
    """The steps the first part logged after the checkpoint a run resumes from are logged
    again by the resumed part; metrics.csv keeps each of them once (`sam-train`'s entry point
    in this process)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    run = tmp_path / "outputs" / "mae" / "run"
    common = [
        "stage=mae",
        *SHORT,
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    res = call_main(sam_train_main, [*common, f"hydra.run.dir={run}"], capfd)
    assert res.returncode == 0, res.stderr[-3000:]
    first_epoch = run / "checkpoints" / "epoch000-step000002.ckpt"
    assert first_epoch.is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())

    res = call_main(sam_train_main, [*common, f"ckpt_path={first_epoch}"], capfd)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]
    val_steps = [int(r["step"]) for r in rows if r.get("val/loss")]
    assert val_steps == [1, 3]  # each epoch's validation once
