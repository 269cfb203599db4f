"""Pictures of text-prompted masks (issue 5): `masks/text_epoch_NNN.png` and `masks/text_final.png`.

Top row: the mask predicted from the category phrase ("a photo of a {name}.") alone; bottom
row: from the mask's region embedding. Red fill = prediction, green outline = ground truth.
Written only when the module trains text prompts and the validation data names categories.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from sam_train.data.batch import SamBatch
from sam_train.models.sam.sam import upscale_logits
from sam_train.training.prompts import select_masks
from sam_train.viz.mae_grid import save_png
from sam_train.viz.sam_masks import mask_panel, panel_grid


@torch.no_grad()
def text_prompt_panels(module, batch: SamBatch, num_masks: int) -> list[list[np.ndarray]]:
    """Two rows of panels (phrase, region) for the first named masks of `batch`."""
    sam, text = module.model, module.text
    targets = select_masks(batch, num_masks, generator=torch.Generator().manual_seed(0))
    phrase, named = text.categories(batch, targets)
    region, _ = text.regions(batch, targets)
    keep = named.nonzero()[:, 0][:num_masks]
    if keep.numel() == 0:
        return [[], []]
    was_training = sam.training
    sam.eval()
    emb, size = sam.embed_images(batch.images), batch.image_size
    rows = []
    for embeds in (phrase[keep], region[keep]):
        k = keep.numel()
        pads = (torch.zeros(k, 2, 2, device=emb.device), torch.full((k, 2), -1, device=emb.device))
        logits, _ = sam.decode(
            emb,
            points=pads,
            text_embeds=embeds[:, None].to(emb.dtype),
            image_index=targets.image_index[keep],
            multimask_output=False,
            pad_points=False,
        )
        pred = upscale_logits(logits.float(), (size, size))[:, 0] > sam.mask_threshold
        rows.append(
            [
                mask_panel(
                    batch.images[targets.image_index[i]],
                    targets.masks[i],
                    pred[j],
                    tuple(targets.image_hw[i].tolist())
                    if targets.image_hw is not None
                    else (size, size),
                )
                for j, i in enumerate(keep.tolist())
            ]
        )
    sam.train(was_training)
    return rows


class SamTextPictures(L.Callback):
    """Writes the text-prompt pictures every `every_n_epochs` validation epochs and at the end.

    Args:
        every_n_epochs: picture interval. num_masks: masks per row. dirname: under the run folder.
    """

    def __init__(self, every_n_epochs: int = 1, num_masks: int = 6, dirname: str = "masks") -> None:
        self.every_n_epochs, self.num_masks, self.dirname = every_n_epochs, num_masks, dirname
        self._batch: SamBatch | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._batch is None and getattr(pl_module, "text", None) is not None:
            self._batch = batch.to("cpu")

    def _write(self, trainer: L.Trainer, pl_module, name: str) -> Path | None:
        if self._batch is None:
            return None
        rows = text_prompt_panels(pl_module, self._batch.to(pl_module.device), self.num_masks)
        if not rows[0]:
            return None
        path = Path(trainer.default_root_dir) / self.dirname / f"{name}.png"
        save_png(panel_grid(rows), path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/text_masks", [str(path)], step=trainer.global_step)
        return path

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._write(trainer, pl_module, f"text_epoch_{trainer.current_epoch:03d}")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, pl_module, "text_final")
