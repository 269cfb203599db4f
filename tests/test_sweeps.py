"""Hydra multirun, the Optuna sweeper, and the SLURM launcher config, through `sam-train`'s
entry point in this process."""

from __future__ import annotations

import pytest
import yaml
from conftest import MAE_TINY, call_main, sam_train_main

QUICK = [*MAE_TINY, "data.samples_per_epoch=8", "trainer.max_epochs=1"]


@pytest.fixture
def sam_train(tmp_path, monkeypatch, capfd):
    """`sam-train ARGS` through its entry point in this process, from a shell in `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    return lambda args: call_main(sam_train_main, args, capfd)


def val_loss(run_dir) -> float:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r["val/loss"]][-1]


@pytest.mark.slow
def test_two_value_multirun_writes_two_run_folders(tmp_path, sam_train):
    sweep = tmp_path / "sweep"
    res = sam_train(["-m", "stage=mae", *QUICK, "optim.lr=1e-4,1e-3", f"hydra.sweep.dir={sweep}"])
    assert res.returncode == 0, res.stderr[-3000:]
    lrs = set()
    for job in ("0", "1"):
        cfg = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        lrs.add(cfg["optim"]["lr"])
        assert val_loss(sweep / job) > 0
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    assert lrs == {1e-4, 1e-3}


@pytest.mark.slow
def test_optuna_search_of_two_trials_returns_the_best_value(tmp_path, sam_train):
    sweep = tmp_path / "optuna"
    res = sam_train(
        [
            "hparams_search=mae_optuna",
            *QUICK,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = [val_loss(sweep / job) for job in ("0", "1")]
    assert result["best_value"] == pytest.approx(min(losses), rel=1e-5)
    assert set(result["best_params"]) == {"optim.base_lr", "model.mask_ratio", "optim.weight_decay"}


def test_slurm_launcher_composes_with_requeue_and_resume(sam_train):
    res = sam_train(
        [
            "stage=mae",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "trainer=ddp",
            "--cfg",
            "hydra",
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    hydra_cfg = yaml.safe_load(res.stdout)["hydra"]
    launcher = hydra_cfg["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["max_num_timeout"] > 0
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"]
    job = sam_train(["stage=mae", "--cfg", "job"])
    assert yaml.safe_load(job.stdout)["auto_resume"] is True
