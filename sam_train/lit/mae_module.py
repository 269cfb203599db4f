"""Stage 1: the LightningModule that pretrains a `MaskedAutoencoder`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sam_train.lit.base import StageModule
from sam_train.lit.optim import DerivedSchedule, OptimConfig, encoder_layer_id, param_groups
from sam_train.lit.progress import batches_started
from sam_train.lit.val_sources import SourceMeans, val_source_names
from sam_train.models.mae import MaskedAutoencoder
from sam_train.seeding import sample_seed

log = logging.getLogger(__name__)


class MaeModule(StageModule, stage="mae", level=1):
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
        super().__init__(run_config, seed, max_nonfinite)
        self.model = model
        self.optim = optim
        self.val_seed = val_seed
        self._val_sources: SourceMeans | None = None  # a mixture's per-source val/loss
        self.val_mask_ratio = val_mask_ratio
        self.derived: DerivedSchedule | None = None
        # read by Lightning's ThroughputMonitor; unknown here (benchmarks/ count FLOPs)
        self.flops_per_batch: int | None = None

    # ------------------------------------------------------------------------- steps
    def loss(
        self, batch: Any, seed: int, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, int]:
        """(loss, images in the batch) with masks drawn from `seed`; the one hook a stage
        built on this one (SAMI) overrides."""
        loss, _, _ = self.model(batch, mask_ratio=mask_ratio, noise=self.masking_noise(batch, seed))
        return loss, batch.shape[0]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        key = sample_seed(self.seed, batches_started(self.trainer), self.global_rank)
        loss, n = self.loss(batch, key)
        if not self.guard.ok(loss, self):
            return None  # Lightning skips backward and the optimiser step
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # masks depend only on val_seed and the batch index: comparable between epochs and runs
        loss, n = self.loss(batch, self.val_seed + batch_idx, self.val_mask_ratio)
        self.log_val_loss(loss, n, dataloader_idx)

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
        """The masking noise of validation batch `batch_idx`: [B, L] (pictures reuse it)."""
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

    # ------------------------------------------------------------------------- export
    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        """Weights written at the end of training: the encoder in our ViT layout."""
        encoder = self.model.encoder
        meta = {
            **self.export_meta(),
            "format": "sam_train.vit",
            "architecture": encoder.architecture,
        }
        return {"encoder": (encoder.state_dict(), meta)}
