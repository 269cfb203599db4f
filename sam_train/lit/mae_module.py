"""Stage 1: the LightningModule that pretrains a `MaskedAutoencoder`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sam_train.lit.base import StageModule
from sam_train.lit.guards import NonFiniteLossGuard
from sam_train.lit.optim import DerivedSchedule, OptimConfig, encoder_layer_id, param_groups
from sam_train.lit.progress import batches_started
from sam_train.lit.val_sources import SourceMeans, val_source_names
from sam_train.models.mae import MaskedAutoencoder
from sam_train.seeding import sample_seed

log = logging.getLogger(__name__)


class MaeModule(StageModule):
    """Trains a masked autoencoder.

    Args:
        model: the `MaskedAutoencoder` (a plain nn.Module).
        optim: optimiser and schedule settings.
        run_config: the composed run config, stored in every checkpoint so a checkpoint alone
            says which architecture it holds (export and init read it).
        val_seed: seeds the masks of validation batches so the validation loss is comparable
            between epochs and runs.
        seed: training masks are drawn from (seed, batches so far, rank), not the global RNG,
            so a resumed run draws the masks the interrupted one would have.
        max_nonfinite: consecutive non-finite losses that stop the run (each one is skipped).
        val_mask_ratio: the mask ratio of validation, whatever `model.mask_ratio` trains with:
            val/loss of runs with different training ratios stays comparable (a search over
            the ratio would otherwise favour the ratios that are easy to reconstruct).
    """

    batch_stage = "mae"  # takes the batches of the data that feeds stage=mae (images)

    def __init__(
        self,
        model: MaskedAutoencoder,
        optim: OptimConfig,
        run_config: dict | None = None,
        val_seed: int = 1234,
        seed: int = 0,
        max_nonfinite: int = 20,
        val_mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.run_config = run_config
        self.val_seed = val_seed
        self._val_sources: SourceMeans | None = None  # a mixture's per-source val/loss
        self.seed = seed
        self.guard = NonFiniteLossGuard(max_nonfinite)
        self.val_mask_ratio = val_mask_ratio
        self.derived: DerivedSchedule | None = None
        # read by Lightning's ThroughputMonitor; unknown here (benchmarks/ count FLOPs)
        self.flops_per_batch: int | None = None

    # ------------------------------------------------------------------------- steps
    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        key = sample_seed(self.seed, batches_started(self.trainer), self.global_rank)
        loss, _, _ = self.model(images, noise=self.masking_noise(images, key))
        if not self.guard.ok(loss, self):
            return None  # Lightning skips backward and the optimiser step
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(
        self, images: torch.Tensor, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        noise = self.validation_noise(images, batch_idx)
        loss, _, _ = self.model(images, mask_ratio=self.val_mask_ratio, noise=noise)
        self.log_val_loss(loss, images.shape[0], dataloader_idx)

    def log_val_loss(self, loss: torch.Tensor, batch_size: int, dataloader_idx: int) -> None:
        """`val/loss`; with several validation sources (a mixture) also `val/<source>/loss`,
        logged at the epoch end."""
        if self._val_sources is None:
            self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        else:
            self._val_sources.add(dataloader_idx, loss, batch_size)

    def on_validation_epoch_start(self) -> None:
        names = val_source_names(self.trainer)
        self._val_sources = SourceMeans(len(names)) if names else None

    def on_validation_epoch_end(self) -> None:
        if self._val_sources is None:
            return
        strategy = self.trainer.strategy
        names = val_source_names(self.trainer)
        per_source, overall = self._val_sources.compute(
            names, reduce=lambda t: strategy.reduce(t.to(self.device), reduce_op="sum")
        )
        for name, value in per_source.items():
            self.log(f"val/{name}/loss", value)
        if overall is not None:
            self.log("val/loss", overall, prog_bar=True)

    def masking_noise(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Noise that decides the masks, from a seeded generator: [B, L]."""
        n_patches = (images.shape[-2] // self.model.patch_size) * (
            images.shape[-1] // self.model.patch_size
        )
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape[0], n_patches, generator=gen).to(images.device)

    def validation_noise(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Masking noise that depends only on `val_seed` and the batch index: [B, L]."""
        return self.masking_noise(images, self.val_seed + batch_idx)

    # ------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        encoder = self.model.encoder
        groups = param_groups(
            self.model,
            self.optim.weight_decay,
            no_decay_names=self.model.no_weight_decay(),
            layer_decay=self.optim.layer_decay,
            layer_of=lambda name: encoder_layer_id(name, encoder.depth),
            num_layers=encoder.depth,
        )
        return self.optimizer_config(groups)

    # ------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sam_train"] = {"stage": "mae", "config": self.run_config}

    # ------------------------------------------------------------------------- export
    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        """Weights written at the end of training: the encoder in our ViT layout."""
        encoder = self.model.encoder
        meta = {
            "format": "sam_train.vit",
            "stage": "mae",
            "architecture": encoder.architecture,
            "config": self.run_config,
        }
        return {"encoder": (encoder.state_dict(), meta)}
