"""The stage-2 Optuna search (`hparams_search=sam_optuna`) and early stopping on the optimised
metric (`callbacks=early_stopping`), at tiny sizes, in this process
(the search through `sam-train`'s entry point, as Hydra's multirun runs it)."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from conftest import SAM_TINY, call_main, sam_train_main, train_in_process, write_official_base

pytestmark = pytest.mark.slow
SEARCHED = ("optim.lr=", "stage.module.max_masks_per_image=")
FIXED = [a for a in SAM_TINY if not a.startswith(SEARCHED)]


def last_val_miou(run_dir) -> float:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r["val/miou_point_confident"] for r in csv.DictReader(f)]
    return [float(v) for v in rows if v][-1]


def test_two_trial_lora_search_returns_the_best_validation_miou(tmp_path, capfd):
    base = tmp_path / "base.pth"
    write_official_base(base)
    sweep = tmp_path / "search"
    res = call_main(
        sam_train_main,
        [
            "stage=sam",
            "hparams_search=sam_optuna",
            *FIXED,
            f"model.init_from={base}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        capfd,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    mious = [last_val_miou(sweep / job) for job in ("0", "1")]
    assert result["best_value"] == pytest.approx(max(mious), rel=1e-5)
    assert set(result["best_params"]) == {
        "optim.lr",
        "optim.layer_decay",
        "peft.rank",
        "stage.module.interactive.loss_weights.loss_focal",
        "stage.module.max_masks_per_image",
    }
    ranks = []
    for job in ("0", "1"):
        cfg = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        ranks.append(cfg["peft"]["rank"])
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=False)
        lora_a = ckpt["state_dict"]["model.image_encoder.blocks.0.attn.qkv.lora_A"]
        assert lora_a.shape[0] == cfg["peft"]["rank"]  # each trial trained its own rank


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(tmp_path):
    run = tmp_path / "run"
    train_in_process(
        [
            "stage=sam",
            *SAM_TINY,
            "trainer.max_epochs=4",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=10",  # no change of mIoU counts as improving
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        run,
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # epoch 0 sets the best, epoch 1 fails to beat it: stop after 2 of 4 epochs (2 steps each)
    assert ckpt["global_step"] == 4
