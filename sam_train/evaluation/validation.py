"""Stage-2 validation: which masks are scored, with which prompts, and the figures over an epoch.

One centre point (oracle and most-confident of 3 masks), one box, the click curve and NoC
(`sam_train.metrics`); with text prompts, category phrases and region embeddings
(`miou_text`, `miou_region`); on COCO-like data, mask AP of box prompts (`sam_train.coco_eval`).
Means are sums and counts added over ranks before dividing.

Training's `SamModule` and `sam-eval`'s `EvalModule` both hold a `SamValidation`, so the two
give the same figures for the same checkpoint, data and settings. It knows nothing of
Lightning: the holder embeds the images, passes the rank reduction in, and logs the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sam_train.coco_eval import CocoMaskAP, box_prompt_predictions, is_coco_like
from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA, SamBatch, image_regions
from sam_train.distributed import all_gather_objects
from sam_train.metrics import PromptMetrics, evaluate_prompts, evaluate_text_prompts, mask_iou
from sam_train.models.sam.sam import Sam
from sam_train.seeding import sample_seed
from sam_train.training.prompts import PromptTargets, select_masks
from sam_train.training.text_prompts import TextPrompts, category_names

Reduce = Callable[[torch.Tensor], torch.Tensor]


class SamValidation:
    """Scores a `Sam` on validation batches and reduces the figures over ranks.

    Args:
        max_masks: masks evaluated per image (`val_max_masks`).
        max_clicks: length of the click curve (`val_max_clicks`).
        min_mask_area: masks with fewer pixels are not scored.
        max_mask_fraction: masks covering more of the image are not scored.
        seed: the masks scored are drawn from (seed, batch index), the same every epoch.
        coco_eval: mask AP of box prompts when every scored mask has a category.
        text: score text prompts too (`miou_text`, `miou_text_wrong`, `miou_whole_image`,
            `miou_region`).
        extra_results: more per-mask results a holder adds with `add` (name -> width),
            reduced over ranks with the others.
    """

    def __init__(
        self,
        max_masks: int = 16,
        max_clicks: int = 10,
        min_mask_area: int = MIN_MASK_AREA,
        max_mask_fraction: float = MAX_MASK_FRACTION,
        seed: int = 0,
        coco_eval: bool = True,
        text: bool = False,
        extra_results: dict[str, int] | None = None,
    ) -> None:
        self.max_masks = max_masks
        self.max_clicks = max_clicks
        self.min_mask_area = min_mask_area
        self.max_mask_fraction = max_mask_fraction
        self.seed = seed
        self.coco = CocoMaskAP() if coco_eval else None
        layout = {
            "iou_point_oracle": 1,
            "iou_point_confident": 1,
            "iou_box": 1,
            "iou_clicks": max_clicks,
        }
        if text:
            layout.update(iou_text=1, iou_text_wrong=1, iou_whole_image=1, iou_region=1)
        layout.update(extra_results or {})
        self.metrics = PromptMetrics(layout=layout)
        self.source_names: list[str] = []
        self.source_metrics: list[PromptMetrics] = []

    # ------------------------------------------------------------------------- an epoch
    def start_epoch(self, source_names: list[str]) -> None:
        """Forget the last epoch; `source_names`: a mixture's validation sources, each also
        reported on its own ([] for one validation set)."""
        self.metrics.reset()
        self.source_names = list(source_names)
        self.source_metrics = [PromptMetrics(layout=self.metrics.layout) for _ in source_names]
        if self.coco is not None:
            self.coco.reset()

    def select(self, batch: SamBatch, batch_idx: int) -> PromptTargets:
        """The batch's masks that are scored (the same ones every epoch and on every run)."""
        gen = torch.Generator().manual_seed(sample_seed(self.seed, 0, batch_idx))
        return select_masks(batch, self.max_masks, self.max_mask_fraction, self.min_mask_area, gen)

    def score(
        self,
        model: Sam,
        batch: SamBatch,
        targets: PromptTargets,
        embeddings: torch.Tensor,
        source: int = 0,
        text: TextPrompts | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prompt the selected masks (`embeddings`: [B, C, h, w] of `batch.images`), add the
        results to the epoch's figures, and return the point, box and click results per mask
        ([K] each, `iou_clicks` [K, max_clicks])."""
        results = evaluate_prompts(
            model,
            embeddings,
            targets.masks,
            targets.image_index,
            boxes=targets.boxes,
            image_hw=targets.image_hw,
            max_clicks=self.max_clicks,
        )
        self.add(results, source)
        if text is not None:
            self.add(text_results(model, text, batch, targets, embeddings), source)
        categories = batch.category_ids[targets.image_index, targets.slot]
        if self.coco is not None and is_coco_like(categories):
            masks, scores = box_prompt_predictions(
                model, embeddings, targets.boxes, targets.image_index, batch.image_size
            )
            self.coco.update(
                targets.masks, masks, scores, categories, targets.image_index, targets.image_hw
            )
        return results

    def add(self, results: dict[str, torch.Tensor], source: int = 0) -> None:
        """More per-mask results of this epoch (names in the layout)."""
        self.metrics.update(results)
        if self.source_metrics:
            self.source_metrics[source].update(results)

    def compute(self, reduce: Reduce | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch's figures over every rank (call on all ranks, in the same order):
        (`{"<source>/<metric>": value}` for each mixture source, `{"<metric>": value}` overall,
        e.g. `miou_point_confident`, `miou_click_3`, `noc90`, `coco_mask_ap`)."""
        by_source = {
            f"{name}/{metric}": value
            for name, source in zip(self.source_names, self.source_metrics)
            for metric, value in source.compute(reduce=reduce).items()
        }
        overall = self.metrics.compute(reduce=reduce)
        if self.coco is not None:
            overall.update(self.coco.compute(gather=all_gather_objects))
        return by_source, overall


def text_results(
    model: Sam, text: TextPrompts, batch: SamBatch, targets: PromptTargets, embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    """IoU of masks prompted by their category phrase (`iou_text`), by another category's
    phrase (`iou_text_wrong`, a chance level), by their region embedding (`iou_region`), and
    of a whole-image mask (`iou_whole_image`, another chance level)."""
    out: dict[str, torch.Tensor] = {}

    def score(name: str, embeds: torch.Tensor, ok: torch.Tensor) -> None:
        if ok.any():
            hw = targets.image_hw[ok] if targets.image_hw is not None else None
            out[name] = evaluate_text_prompts(
                model,
                embeddings,
                targets.masks[ok],
                targets.image_index[ok],
                embeds[ok].to(embeddings.dtype),
                hw,
            )

    names = category_names(batch, targets)
    phrase, named = text.categories(batch, targets)
    score("iou_text", phrase, named)
    vocab = sorted({n for n in names if n})
    if len(vocab) > 1:
        wrong = [vocab[(vocab.index(n) + 1) % len(vocab)] if n else None for n in names]
        other, _ = text.phrases([text.cfg.template.format(n) if n else None for n in wrong])
        score("iou_text_wrong", other, named)
    if named.any():
        region = image_regions(
            targets.image_hw, targets.num_masks, batch.image_size, targets.masks.device
        )
        out["iou_whole_image"] = mask_iou(region[named], targets.masks[named])
    region_emb, region_ok = text.regions(batch, targets)
    score("iou_region", region_emb, region_ok)
    return out
