"""Inside a real Lightning run: a NaN loss is skipped and counted; a crash while saving a
checkpoint leaves the previous one loadable."""

from __future__ import annotations

import fsspec.implementations.local as fs_local
import lightning as L
import pytest
import torch
from conftest import tiny_mae
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from sam_train.lit.mae_module import MaeModule
from sam_train.lit.optim import OptimConfig


class _Images(L.LightningDataModule):
    batch_size = 2

    def train_dataloader(self):
        return DataLoader(torch.randn(8, 3, 32, 32), batch_size=2)


class NanAtStep(L.Callback):
    """Poison the model's output at one step; record the weights before and after it."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.step:
            self.before = pl_module.model.decoder_pred.weight.detach().clone()
            forward = pl_module.model.forward

            def poisoned(*args, **kwargs):
                loss, pred, mask = forward(*args, **kwargs)
                return loss * float("nan"), pred, mask

            pl_module.model.forward = poisoned

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.step:
            del pl_module.model.forward  # back to the class method
            self.after = pl_module.model.decoder_pred.weight.detach().clone()


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_a_nan_loss_in_training_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    module = MaeModule(tiny_mae(), OptimConfig(lr=1e-3))
    poison = NanAtStep(step=2)
    t = trainer(tmp_path, callbacks=[poison], enable_checkpointing=False)
    t.fit(module, datamodule=_Images())
    assert module.guard.skipped == 1
    assert torch.equal(poison.before, poison.after)  # no optimiser step on the NaN batch
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_top_k=0, save_last=True, every_n_train_steps=1
    )
    t = trainer(tmp_path, callbacks=[ckpt], max_steps=2)
    module = MaeModule(tiny_mae(), OptimConfig(lr=1e-3))
    t.fit(module, datamodule=_Images())
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2

    real_write = fs_local.LocalFileOpener.write

    def write_half_then_die(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(fs_local.LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(OSError, match="mid-write"):
        t.save_checkpoint(last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the old file, whole
