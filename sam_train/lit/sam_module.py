"""Stage 2: the LightningModule that trains a promptable segmenter (SAM) on masks.

A step: pick up to N masks per image, embed each image once, run the interactive prompt loop
(`sam_train.training.interactive`), log each loss term. Validation: one centre point (oracle
and most-confident of 3 masks), one box, the click curve and NoC (`sam_train.metrics`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from sam_train.data.batch import SamBatch
from sam_train.data.resumable import sample_seed
from sam_train.lit.guards import NonFiniteLossGuard
from sam_train.lit.mae_module import effective_batch_size
from sam_train.lit.optim import (
    DerivedSchedule,
    OptimConfig,
    build_optimizer,
    derive_schedule,
    encoder_layer_id,
    param_groups,
)
from sam_train.metrics import PromptMetrics, evaluate_prompts
from sam_train.models.sam.sam import Sam
from sam_train.training.interactive import InteractiveConfig, interactive_loss
from sam_train.training.prompts import select_masks

log = logging.getLogger(__name__)


class SamModule(L.LightningModule):
    """Trains a `Sam`.

    Args:
        model: the Sam (plain nn.Module).
        optim: optimiser and schedule (layer-wise decay applies to the image encoder).
        interactive: the prompt-simulation recipe (rounds, first-prompt kinds, box noise).
        run_config: the composed run config, stored in checkpoints and exports.
        max_masks_per_image: masks trained per image per step (64 in SAM).
        min_mask_area: masks with fewer pixels are dropped.
        max_mask_fraction: masks covering more of the image are dropped (0.9 in SAM).
        val_max_masks: masks evaluated per validation image.
        val_max_clicks: length of the validation click curve.
        seed: prompts and mask subsets are drawn from (seed, batches so far, rank).
        max_nonfinite: consecutive non-finite losses that stop the run.
    """

    def __init__(
        self,
        model: Sam,
        optim: OptimConfig,
        interactive: InteractiveConfig | None = None,
        run_config: dict | None = None,
        max_masks_per_image: int = 64,
        min_mask_area: int = 25,
        max_mask_fraction: float = 0.9,
        val_max_masks: int = 16,
        val_max_clicks: int = 10,
        seed: int = 0,
        max_nonfinite: int = 20,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.interactive = interactive or InteractiveConfig()
        self.run_config = run_config
        self.max_masks_per_image = max_masks_per_image
        self.min_mask_area = min_mask_area
        self.max_mask_fraction = max_mask_fraction
        self.val_max_masks = val_max_masks
        self.val_max_clicks = val_max_clicks
        self.seed = seed
        self.guard = NonFiniteLossGuard(max_nonfinite)
        self.val_metrics = PromptMetrics()
        self.last_val_metrics: dict[str, float] = {}
        self.derived: DerivedSchedule | None = None
        self.flops_per_batch: int | None = None

    @property
    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.image_encoder.parameters())

    def _generator(self, stream: int) -> torch.Generator:
        n_batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
        key = sample_seed(self.seed + stream, n_batches, self.global_rank)
        return torch.Generator().manual_seed(key)

    # ------------------------------------------------------------------------- steps
    def training_step(self, batch: SamBatch, batch_idx: int) -> torch.Tensor | None:
        gen = self._generator(stream=0)
        targets = select_masks(
            batch, self.max_masks_per_image, self.max_mask_fraction, self.min_mask_area, gen
        )
        with torch.set_grad_enabled(self.encoder_trainable):
            embeddings = self.model.embed_images(batch.images)  # once per image, every round reuses it
        result = interactive_loss(self.model, embeddings, targets, self.interactive, gen)
        loss = result.losses["loss"]
        if not self.guard.ok(loss, self):
            return None
        bs = batch.batch_size
        for name, value in result.losses.items():  # loss_focal, loss_dice, loss_iou, loss
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs)
        self.log("train/masks_per_image", targets.num_masks / bs, batch_size=bs)
        if targets.num_masks:
            self.log("train/iou_first_round", result.round_iou[0], batch_size=bs)
            self.log("train/iou_last_round", result.round_iou[-1], batch_size=bs)
        return loss

    def validation_step(self, batch: SamBatch, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(sample_seed(self.seed, 0, batch_idx))
        targets = select_masks(
            batch, self.val_max_masks, self.max_mask_fraction, self.min_mask_area, gen
        )
        if targets.num_masks == 0:
            return
        embeddings = self.model.embed_images(batch.images)
        results = evaluate_prompts(
            self.model,
            embeddings,
            targets.masks,
            targets.image_index,
            boxes=targets.boxes,
            image_hw=targets.image_hw,
            max_clicks=self.val_max_clicks,
        )
        self.val_metrics.update(results)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        if not metrics:
            return
        self.last_val_metrics = metrics
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True, prog_bar=name == "miou_point_confident")

    # ------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        total = max(int(trainer.estimated_stepping_batches), 1)
        steps_per_epoch = total / max(trainer.max_epochs or 1, 1)
        batch_size = trainer.datamodule.batch_size
        self.derived = derive_schedule(
            self.optim, effective_batch_size(trainer, batch_size), total, steps_per_epoch
        )
        log.info("stage-2 optimiser: %s", self.derived.describe())
        depth = self.model.image_encoder.depth

        def layer_of(name: str) -> int:
            if name.startswith("image_encoder."):
                return encoder_layer_id(name.removeprefix("image_encoder."), depth)
            return depth + 1  # prompt encoder and mask decoder: full lr

        groups = param_groups(
            self.model,
            self.optim.weight_decay,
            no_decay_names=self.model.no_weight_decay(),
            layer_decay=self.optim.layer_decay,
            layer_of=layer_of,
            num_layers=depth,
        )
        optimizer, scheduler = build_optimizer(groups, self.optim, self.derived)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_fit_start(self) -> None:
        if self.derived is not None and self.logger is not None:
            self.logger.log_hyperparams({f"derived/{k}": v for k, v in self.derived.as_dict().items()})

    # ------------------------------------------------------------------------- checkpoints, export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sam_train"] = {
            "stage": "sam",
            "config": self.run_config,
            "architecture": self.model.architecture,
        }

    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        """The whole SAM in our layout, and its image encoder alone."""
        meta = {"stage": "sam", "config": self.run_config}
        return {
            "sam": (self.model.state_dict(), {**meta, "format": "sam_train.sam",
                                              "architecture": self.model.architecture}),
            "encoder": (self.model.image_encoder.state_dict(), {**meta, "format": "sam_train.vit",
                        "architecture": self.model.image_encoder.architecture}),
        }
