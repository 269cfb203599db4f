"""Callbacks shared by both stages: pictures during training and weight export at the end."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from sam_train.viz.mae_grid import CAPTION as MAE_CAPTION
from sam_train.viz.mae_grid import mae_reconstruction_grid, save_caption, save_png
from sam_train.weights.safetensors_io import save_weights

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


BEFORE_TRAINING = "before_training"  # the picture of a validation run before training


def picture_title(trainer: L.Trainer, name: str) -> str:
    """What a picture shows: "before training", "epoch N (step S)" or "after training"."""
    if name == BEFORE_TRAINING:
        return "before training (the model as initialised)"
    if name == "final":
        return f"after training: epoch {trainer.current_epoch}, step {trainer.global_step}"
    return f"epoch {trainer.current_epoch}, step {trainer.global_step}"


class ValidationPictures(L.Callback):
    """Keeps the first validation batches and draws a picture of them every `every_n_epochs`
    validation epochs (`<dirname>/epoch_NNN.png`), at the end (`<dirname>/final.png`) and, for
    a validation run before training (`validate_before_training`), as
    `<dirname>/before_training.png`; each titled with what it shows, with a caption file
    `<dirname>/README.txt`, and sent to wandb when it logs. Subclasses say what to keep (up to
    `max_batches` batches) and how to draw it."""

    log_key = "val/picture"
    caption = ""
    prefix = ""  # file names: <prefix>epoch_NNN.png, <prefix>final.png, ...
    max_batches = 1

    def __init__(self, every_n_epochs: int, dirname: str) -> None:
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self._batches: list = []

    def keep(self, batch):
        """What of a validation batch to hold on to (on the CPU), or None to skip it."""
        raise NotImplementedError

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list, title: str):
        """An RGB uint8 array of the kept batches, or None when there is nothing to show."""
        raise NotImplementedError

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if dataloader_idx == 0 and batch_idx == len(self._batches) < self.max_batches:
            kept = self.keep(batch)
            if kept is not None:
                self._batches.append(kept)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        if not self._batches:
            return None
        picture = self.draw(trainer, pl_module, self._batches, picture_title(trainer, name))
        if picture is None:
            return None
        folder = run_dir(trainer) / self.dirname
        path = folder / f"{self.prefix}{name}.png"
        save_png(picture, path)
        if self.caption:
            save_caption(folder / "README.txt", self.caption)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(self.log_key, [picture], step=trainer.global_step)
        return path

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        # after the module's own epoch-end hook (callbacks' epoch-end hooks run before it),
        # so the metrics the module computed for this validation are there to draw
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:  # a validation run before training
            self._write(trainer, pl_module, BEFORE_TRAINING)
        elif (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        path = self._write(trainer, pl_module, "final")
        if path is not None:
            log.info("%s: %s", self.dirname, path)


class MaeReconstructionGrid(ValidationPictures):
    """Original | masked | reconstruction | reconstruction with the visible patches, for the
    first validation images with fixed masks, in `reconstructions/` (see `viz.mae_grid`)."""

    log_key = "val/reconstruction"
    caption = MAE_CAPTION

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 4, dirname: str = "reconstructions"
    ):
        super().__init__(every_n_epochs, dirname)
        self.num_images = num_images

    def keep(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[: self.num_images].detach().cpu().clone()

    def draw(self, trainer, pl_module, batches: list[torch.Tensor], title: str):
        images = batches[0].to(pl_module.device)
        noise = pl_module.validation_noise(images, batch_idx=0)
        return mae_reconstruction_grid(pl_module.model, images, noise, title=title)


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


SAM_CAPTION = """
Stage-2 (SAM) predictions on held-out validation images, one tile per mask, the masks taken in
turn from several images (the image's name at the bottom left of each tile). Top row: the mask
predicted from one click at the mask's centre (the most confident of the 3 outputs); bottom
row: from the mask's bounding box. Green outline = ground truth, magenta outline and tint =
prediction, yellow dot / rectangle = the prompt; the IoU of each prediction at the top left.
Tiles show the real image only (the padding to a square is cut off).
before_training.png: the model as initialised; epoch_NNN.png: after that epoch;
final.png: after training. click_curve.png: validation mIoU after 1..N corrective clicks.
"""


class SamMaskPictures(ValidationPictures):
    """`masks/epoch_NNN.png`, `masks/final.png` (and `masks/before_training.png`): for masks
    from several validation images, the one-point prediction (top row) and the one-box
    prediction (bottom row) against the ground truth, with IoUs and a legend; and
    `masks/click_curve.png`, validation mIoU after 1..N clicks."""

    log_key = "val/masks"
    caption = SAM_CAPTION

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_masks: int = 6,
        dirname: str = "masks",
        num_batches: int = 4,
    ) -> None:
        super().__init__(every_n_epochs, dirname)
        self.num_masks = num_masks
        self.max_batches = num_batches

    def keep(self, batch):
        return batch.to("cpu")

    def draw(self, trainer, pl_module, batches, title: str):
        from sam_train.viz.sam_masks import click_curve_png, tile_grid
        from sam_train.viz.sam_predictions import one_prompt_rows

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
                f"validation mIoU after N clicks ({title.split(':')[0]})",
            )
        rows = one_prompt_rows(
            pl_module.model,
            [b.to(pl_module.device) for b in batches],
            self.num_masks,
            min_area=getattr(pl_module, "min_mask_area", 0),
            max_fraction=getattr(pl_module, "max_mask_fraction", 1.0),
        )
        return tile_grid(rows, title) if rows[0][1] else None


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
