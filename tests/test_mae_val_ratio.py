"""Stage-1 validation scores every run at one mask ratio, so that runs (and Optuna trials) that
train with different ratios are ranked by the same task."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import MAE_TINY, tiny_mae
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from sam_train.lit.mae_module import MaeModule
from sam_train.lit.optim import OptimConfig


def val_loss(module: MaeModule, images: torch.Tensor) -> float:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    out = trainer.validate(module, DataLoader(images, batch_size=4), verbose=False)
    return out[0]["val/loss"]


def test_val_loss_does_not_depend_on_the_training_mask_ratio():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for ratio in (0.5, 0.75, 0.9):
        torch.manual_seed(0)  # the same weights for every ratio
        module = MaeModule(tiny_mae(mask_ratio=ratio), OptimConfig(lr=1e-3))
        losses.append(val_loss(module, images))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert losses[2] == pytest.approx(losses[1], abs=1e-6)

    # and it is the loss at the fixed ratio itself (0.75 by default), with validation's masks
    with torch.no_grad():
        expected, _, mask = module.model(
            images, mask_ratio=0.75, noise=module.validation_noise(images, 0)
        )
    assert mask.mean().item() == pytest.approx(0.75)
    assert losses[2] == pytest.approx(expected.item(), abs=1e-6)


def test_optuna_trials_keep_the_validation_ratio_fixed(tmp_path):
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hparams_search=mae_optuna",
                *MAE_TINY,
                "model.mask_ratio=0.6",  # what a trial sets
                f"paths.run_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    assert cfg.optimized_metric == "val/loss"
    assert "model.mask_ratio" in cfg.hydra.sweeper.params
    module = instantiate(cfg.stage.module, _partial_=True)(
        model=instantiate(cfg.model), optim=instantiate(cfg.optim)
    )
    assert module.model.mask_ratio == 0.6 and module.val_mask_ratio == 0.75
