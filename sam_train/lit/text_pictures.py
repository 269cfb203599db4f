"""Pictures of text-prompted masks: `masks/text_epoch_NNN.png` and `masks/text_final.png`.

Top row: the mask predicted from the category phrase ("a photo of a {name}.") alone; bottom
row: from the mask's region embedding. Red fill = prediction, green outline = ground truth.
Written only when the module trains text prompts and the validation data names categories.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_train.data.batch import SamBatch
from sam_train.lit.callbacks import ValidationPictures
from sam_train.models.sam.sam import upscale_logits
from sam_train.training.prompts import select_masks
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


class SamTextPictures(ValidationPictures):
    """`masks/text_epoch_NNN.png` and `masks/text_final.png` (when the module trains text
    prompts and the validation data names categories).

    Args:
        every_n_epochs: picture interval. num_masks: masks per row. dirname: under the run folder.
    """

    log_key = "val/text_masks"
    prefix = "text_"

    def __init__(self, every_n_epochs: int = 1, num_masks: int = 6, dirname: str = "masks") -> None:
        super().__init__(every_n_epochs, dirname)
        self.num_masks = num_masks

    def keep(self, batch: SamBatch) -> SamBatch:
        return batch.to("cpu")

    def draw(self, trainer, pl_module, batch: SamBatch) -> np.ndarray | None:
        if getattr(pl_module, "text", None) is None:
            return None
        rows = text_prompt_panels(pl_module, batch.to(pl_module.device), self.num_masks)
        return panel_grid(rows) if rows[0] else None
