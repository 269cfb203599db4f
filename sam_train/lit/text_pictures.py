"""Pictures of text-prompted masks: `masks/text_epoch_NNN.png` and `masks/text_final.png`.

Top row: the mask predicted from the category phrase ("a photo of a {name}.") alone; bottom
row: from the mask's region embedding. Drawn like the point/box pictures (`viz.sam_masks`):
green outline = ground truth, magenta = prediction, IoU per tile. Written only when the module
trains text prompts and the validation data names categories.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_train.data.batch import SamBatch
from sam_train.lit.callbacks import ValidationPictures
from sam_train.metrics import mask_iou
from sam_train.models.sam.sam import upscale_logits
from sam_train.training.prompts import select_masks
from sam_train.viz.sam_masks import mask_tile, tile_grid


@torch.no_grad()
def text_prompt_rows(module, batch: SamBatch, num_masks: int) -> list[tuple[str, list]]:
    """Two labelled rows of tiles (phrase, region) for the first named masks of `batch`."""
    sam, text = module.model, module.text
    targets = select_masks(batch, num_masks, generator=torch.Generator().manual_seed(0))
    phrase, named = text.categories(batch, targets)
    region, _ = text.regions(batch, targets)
    keep = named.nonzero()[:, 0][:num_masks]
    if keep.numel() == 0:
        return [("", [])]
    was_training = sam.training
    sam.eval()
    emb, size = sam.embed_images(batch.images), batch.image_size
    rows = []
    for label, embeds in (("category phrase", phrase[keep]), ("region embedding", region[keep])):
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
        tiles: list[np.ndarray] = []
        for j, i in enumerate(keep.tolist()):
            hw = (
                tuple(targets.image_hw[i].tolist()) if targets.image_hw is not None else (size,) * 2
            )
            region_mask = torch.zeros_like(pred[j])
            region_mask[: hw[0], : hw[1]] = True
            p, gt = pred[j] & region_mask, targets.masks[i]
            iou = float(mask_iou(p[None], gt[None])[0])
            image = batch.images[targets.image_index[i]]
            tiles.append(mask_tile(image, gt, p, hw, iou=iou, pixel_norm=sam.pixel_norm))
        rows.append((f"text prompt: {label}", tiles))
    sam.train(was_training)
    return rows


class SamTextPictures(ValidationPictures):
    """Writes the text-prompt pictures every `every_n_epochs` validation epochs and at the end.

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

    def draw(self, trainer, pl_module, batches: list[SamBatch], title: str):
        if getattr(pl_module, "text", None) is None:
            return None
        rows = text_prompt_rows(pl_module, batches[0].to(pl_module.device), self.num_masks)
        return tile_grid(rows, title) if rows[0][1] else None
