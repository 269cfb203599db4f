"""Callbacks shared by both stages: pictures during training and weight export at the end."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from sam_train.viz.mae_grid import mae_reconstruction_grid, save_png
from sam_train.weights.safetensors_io import save_weights

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


class MaeReconstructionGrid(L.Callback):
    """Writes `reconstructions/epoch_NNN.png` every `every_n_epochs` validation epochs and
    `reconstructions/final.png` at the end, from the first validation images with fixed masks."""

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 4, dirname: str = "reconstructions"
    ):
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.dirname = dirname
        self._images: torch.Tensor | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx == 0 and dataloader_idx == 0 and self._images is None:
            self._images = batch[: self.num_images].detach().clone()

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        if self._images is None:
            return None
        images = self._images.to(pl_module.device)
        noise = pl_module.validation_noise(images, batch_idx=0)
        grid = mae_reconstruction_grid(pl_module.model, images, noise)
        path = run_dir(trainer) / self.dirname / f"{name}.png"
        save_png(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/reconstruction", [grid], step=trainer.global_step)
        return path

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._write(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        path = self._write(trainer, pl_module, "final")
        if path is not None:
            log.info("reconstruction grid: %s", path)


class ExportWeights(L.Callback):
    """At the end of fit, writes each of the module's `exports()` as `export/<name>.safetensors`
    (with metadata: architecture, stage, the run config, the step)."""

    def __init__(self, dirname: str = "export") -> None:
        self.dirname = dirname
        self.paths: list[Path] = []

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        for name, (tensors, metadata) in pl_module.exports().items():
            metadata = {**metadata, "global_step": trainer.global_step}
            path = save_weights(
                run_dir(trainer) / self.dirname / f"{name}.safetensors", tensors, metadata
            )
            self.paths.append(path)
            log.info("exported %s weights: %s", name, path)


class SamMaskPictures(L.Callback):
    """Writes `masks/epoch_NNN.png` (and `masks/final.png`): for a few validation masks, the
    one-point prediction (top row) and the one-box prediction (bottom row), with the ground
    truth outlined; and `masks/click_curve.png`, validation mIoU after 1..N clicks."""

    def __init__(self, every_n_epochs: int = 1, num_masks: int = 6, dirname: str = "masks") -> None:
        self.every_n_epochs = every_n_epochs
        self.num_masks = num_masks
        self.dirname = dirname
        self._batch = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx == 0 and dataloader_idx == 0 and self._batch is None:
            self._batch = batch.to("cpu")

    def _write(self, trainer, pl_module, name: str) -> Path | None:
        if self._batch is None:
            return None
        from sam_train.viz.sam_masks import click_curve_png, panel_grid
        from sam_train.viz.sam_predictions import one_prompt_panels

        panels = one_prompt_panels(
            pl_module.model, self._batch.to(pl_module.device), self.num_masks
        )
        if not panels[0]:
            return None
        path = run_dir(trainer) / self.dirname / f"{name}.png"
        save_png(panel_grid(panels), path)
        curve = [
            v
            for k, v in sorted(pl_module.last_val_metrics.items(), key=lambda kv: kv[0])
            if k.startswith("miou_click_")
        ]
        if curve:
            curve = [pl_module.last_val_metrics[f"miou_click_{i + 1}"] for i in range(len(curve))]
            click_curve_png(
                curve,
                run_dir(trainer) / self.dirname / "click_curve.png",
                f"validation mIoU after N clicks (step {trainer.global_step})",
            )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/masks", [str(path)], step=trainer.global_step)
        return path

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._write(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        path = self._write(trainer, pl_module, "final")
        if path is not None:
            log.info("mask pictures: %s", path.parent)
