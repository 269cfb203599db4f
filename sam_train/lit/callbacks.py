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


class ValidationPictures(L.Callback):
    """Keeps the first validation batch and draws a picture of it every `every_n_epochs`
    validation epochs (`<dirname>/<prefix>epoch_NNN.png`) and at the end
    (`<dirname>/<prefix>final.png`), also sent to wandb when it logs. Subclasses say what to
    keep and how to draw."""

    log_key = "val/picture"
    prefix = ""  # of the file names, for two kinds of picture in one folder

    def __init__(self, every_n_epochs: int, dirname: str) -> None:
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self._batch = None

    def keep(self, batch):
        """What of the first validation batch to hold on to (on the CPU)."""
        raise NotImplementedError

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, batch):
        """An RGB uint8 array of the kept batch, or None when there is nothing to show."""
        raise NotImplementedError

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx == 0 and dataloader_idx == 0 and self._batch is None:
            self._batch = self.keep(batch)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        if self._batch is None:
            return None
        picture = self.draw(trainer, pl_module, self._batch)
        if picture is None:
            return None
        path = run_dir(trainer) / self.dirname / f"{self.prefix}{name}.png"
        save_png(picture, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(self.log_key, [picture], step=trainer.global_step)
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
            log.info("%s: %s", self.dirname, path)


class MaeReconstructionGrid(ValidationPictures):
    """Original | masked | reconstruction | reconstruction with the visible patches, for the
    first validation images with fixed masks, in `reconstructions/`."""

    log_key = "val/reconstruction"

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 4, dirname: str = "reconstructions"
    ):
        super().__init__(every_n_epochs, dirname)
        self.num_images = num_images

    def keep(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[: self.num_images].detach().cpu().clone()

    def draw(self, trainer, pl_module, images: torch.Tensor):
        images = images.to(pl_module.device)
        noise = pl_module.validation_noise(images, batch_idx=0)
        return mae_reconstruction_grid(pl_module.model, images, noise)


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


class SamMaskPictures(ValidationPictures):
    """`masks/epoch_NNN.png` and `masks/final.png`: for a few validation masks, the one-point
    prediction (top row) and the one-box prediction (bottom row), with the ground truth
    outlined; and `masks/click_curve.png`, validation mIoU after 1..N clicks."""

    log_key = "val/masks"

    def __init__(self, every_n_epochs: int = 1, num_masks: int = 6, dirname: str = "masks") -> None:
        super().__init__(every_n_epochs, dirname)
        self.num_masks = num_masks

    def keep(self, batch):
        return batch.to("cpu")

    def draw(self, trainer, pl_module, batch):
        from sam_train.viz.sam_masks import click_curve_png, panel_grid
        from sam_train.viz.sam_predictions import one_prompt_panels

        metrics = pl_module.last_val_metrics
        curve = [
            metrics[f"miou_click_{i}"]
            for i in range(1, len(metrics) + 1)
            if f"miou_click_{i}" in metrics
        ]
        if curve:
            click_curve_png(
                curve,
                run_dir(trainer) / self.dirname / "click_curve.png",
                f"validation mIoU after N clicks (step {trainer.global_step})",
            )
        panels = one_prompt_panels(pl_module.model, batch.to(pl_module.device), self.num_masks)
        return panel_grid(panels) if panels[0] else None


class SkippedSamplesLogger(L.Callback):
    """Logs the datamodule's skipped-sample counts as `data/skipped` (and per reason) on this
    rank every `every_n_steps` training steps."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        counter = getattr(trainer.datamodule, "skip_counter", None)
        if counter is None or trainer.global_step % self.every_n_steps:
            return
        counts = counter.as_dict()
        pl_module.log("data/skipped", float(sum(counts.values())), on_step=True, on_epoch=False)
        for reason, n in counts.items():
            if n:
                pl_module.log(f"data/skipped_{reason}", float(n), on_step=True, on_epoch=False)
