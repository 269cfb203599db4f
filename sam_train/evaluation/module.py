"""The LightningModule `sam-eval` validates with: training's validation object
(`SamValidation`, so point, box, click and COCO figures are validation's own, reduced over
ranks the same way), plus, on the same masks and embeddings, a random interior point,
segment-everything proposal recall, per-mask IoUs for the histogram and the worst cases for a
picture page."""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import numpy as np
import torch

from sam_train.automatic import MaskGenerator
from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA, SamBatch
from sam_train.distributed import all_gather_objects
from sam_train.errors import UserError
from sam_train.evaluation.prompts import evaluate_random_point
from sam_train.evaluation.proposals import ProposalRecall
from sam_train.evaluation.validation import SamValidation
from sam_train.lit.val_sources import val_source_names
from sam_train.metrics import center_points
from sam_train.models.pixels import denormalise_pixels
from sam_train.models.sam.sam import Sam, upscale_logits
from sam_train.predictor import SamPredictor
from sam_train.seeding import sample_seed
from sam_train.training.prompts import PromptTargets
from sam_train.viz.sam_masks import mask_tile

TASKS = ("point", "box", "clicks", "everything")


class EvalError(UserError):
    """Input `sam-eval` cannot use; the message names it and the fix."""


class EvalModule(L.LightningModule):
    """Validation of a `Sam` with `sam-eval`'s extra tasks.

    Args:
        model: the Sam. tasks: any of point, box, clicks, everything.
        everything: `MaskGenerator` settings for the everything task.
        num_worst: masks on the worst-cases page (lowest one-point IoU).
        val_max_masks, val_max_clicks, min_mask_area, max_mask_fraction, seed, coco_eval:
            the validation settings (`SamValidation`), as the training run's `stage.module`.
    """

    def __init__(
        self,
        model: Sam,
        tasks: list[str] = TASKS,
        everything: dict[str, Any] | None = None,
        num_worst: int = 12,
        val_max_masks: int = 16,
        val_max_clicks: int = 10,
        min_mask_area: int = MIN_MASK_AREA,
        max_mask_fraction: float = MAX_MASK_FRACTION,
        seed: int = 0,
        coco_eval: bool = True,
    ) -> None:
        super().__init__()
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise EvalError(f"eval.tasks has {unknown}: choose from {list(TASKS)}")
        if "clicks" not in tasks:
            val_max_clicks = 1  # the curve's first click is the centre point
        self.model = model
        self.tasks = list(tasks)
        self.seed = seed
        # the random point is reduced over ranks with validation's own figures
        extra = {"iou_random_point_oracle": 1, "iou_random_point_confident": 1}
        self.validation = SamValidation(
            val_max_masks,
            val_max_clicks,
            min_mask_area,
            max_mask_fraction,
            seed,
            coco_eval=coco_eval,
            extra_results=extra if "point" in tasks else None,
        )
        self.generator = (
            MaskGenerator(model, **{"output_mode": "coco_rle", **(everything or {})})
            if "everything" in tasks
            else None
        )
        if self.generator is not None:  # refuse crop settings too fine for any image, now
            size = model.image_encoder.img_size
            self.generator.check_image_size((size, size))
        self.num_worst = num_worst
        self.proposals = ProposalRecall()
        self.reset_collections()

    def reset_collections(self) -> None:
        self.per_mask: dict[str, list[torch.Tensor]] = {}
        self.mask_counts: Counter = Counter()  # what became of the shards' masks (summed)
        self.worst: list[tuple[float, np.ndarray]] = []
        self.proposals.reset()

    def on_validation_epoch_start(self) -> None:
        self.validation.start_epoch(val_source_names(self.trainer))
        self.reset_collections()
        if self.generator is not None:  # the trainer has moved the model by now
            self.generator.predictor = SamPredictor(self.model, device=self.device)

    def validation_step(self, batch: SamBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        targets = self.validation.select(batch, batch_idx)
        if targets.num_masks == 0:
            return
        embeddings = self.model.embed_images(batch.images)
        results = self.validation.score(self.model, batch, targets, embeddings, dataloader_idx)
        if "point" in self.tasks:
            gen = torch.Generator().manual_seed(sample_seed(self.seed + 1, 0, batch_idx))
            extra = evaluate_random_point(
                self.model, embeddings, targets.masks, targets.image_index, targets.image_hw, gen
            )
            self.validation.add(extra, dataloader_idx)
            results = {**results, **extra}
        for name, value in results.items():
            self.per_mask.setdefault(name, []).append(value.detach().float().cpu())
        self.mask_counts.update(batch.mask_counts or {})
        self._keep_worst(batch, targets, embeddings, results["iou_point_confident"])
        if self.generator is not None:
            self._segment_everything(batch)

    def _keep_worst(
        self, batch: SamBatch, targets: PromptTargets, embeddings: torch.Tensor, ious: torch.Tensor
    ) -> None:
        """Panels of this batch's lowest one-point IoUs, merged into the running worst list."""
        k = min(self.num_worst, ious.numel())
        order = ious.argsort()[:k]
        masks, index = targets.masks[order], targets.image_index[order]
        points = center_points(masks)[:, None]  # [k, 1, 2]
        labels = torch.ones(k, 1, dtype=torch.long, device=masks.device)
        logits, iou_pred = self.model.decode(embeddings, points=(points, labels), image_index=index)
        size = masks.shape[-1]
        best = upscale_logits(logits.float(), (size, size))[torch.arange(k), iou_pred.argmax(1)]
        hw = targets.image_hw[order] if targets.image_hw is not None else None
        for i in range(k):
            h_w = tuple(hw[i].tolist()) if hw is not None else (size, size)
            iou = float(ious[order[i]])
            tile = mask_tile(
                batch.images[index[i]],
                masks[i],
                best[i] > 0,
                h_w,
                points[i],
                labels[i],
                iou=iou,
                pixel_norm=self.model.pixel_norm,
            )
            self.worst.append((iou, tile))
        self.worst = sorted(self.worst, key=lambda t: t[0])[: self.num_worst]

    def _segment_everything(self, batch: SamBatch) -> None:
        rgb = denormalise_pixels(batch.images, self.model.pixel_norm)  # [B, 3, S, S], 0-1
        rgb = (rgb.clamp(0, 1) * 255).round().byte()
        size = batch.image_size
        for b in range(batch.batch_size):
            h, w = batch.image_hw[b].tolist() if batch.image_hw is not None else (size, size)
            image = rgb[b, :, :h, :w].permute(1, 2, 0).cpu().numpy()
            records = self.generator.generate(image)
            gt = batch.masks[b][batch.mask_valid[b]][:, :h, :w]
            self.proposals.update(gt, records)

    def on_validation_epoch_end(self) -> None:
        strategy = self.trainer.strategy

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return strategy.reduce(t.to(self.device), reduce_op="sum")

        by_source, metrics = self.validation.compute(reduce)
        for name, value in {**by_source, **metrics}.items():  # already summed over ranks
            self.log(f"val/{name}", value)
        if self.generator is not None:
            for name, value in self.proposals.compute(gather=all_gather_objects).items():
                self.log(f"val/{name}", value)

    def gathered(
        self,
    ) -> tuple[dict[str, np.ndarray], list[tuple[float, np.ndarray]], dict[str, int]]:
        """Per-mask IoUs, worst-case panels and the mask counts (`MASK_OUTCOMES`) of every
        rank (call on all ranks)."""
        local = {n: torch.cat(v).numpy() for n, v in self.per_mask.items()}
        parts = all_gather_objects([(local, self.worst, dict(self.mask_counts))])
        per_mask: dict[str, list[np.ndarray]] = {}
        worst: list[tuple[float, np.ndarray]] = []
        counts: Counter = Counter()
        for part in parts:
            for values, panels, part_counts in part:
                for n, v in values.items():
                    per_mask.setdefault(n, []).append(v)
                worst += panels
                counts.update(part_counts)
        return (
            {n: np.concatenate(v) for n, v in per_mask.items()},
            sorted(worst, key=lambda t: t[0])[: self.num_worst],
            dict(counts),
        )
