"""Which CLIP embedding prompts each mask (training-only, like the rest of this package).

Training (SAM's recipe, no text labels needed): a mask at least `min_region_area` pixels large
(at the model input) is prompted with the CLIP image embedding of its region, precomputed in
the shards (`sam-prep clip-embed`, `SamBatch.region_embeds`) or computed here on the fly; with
`category_ratio` > 0, that share of those masks whose annotation names a category is prompted
with the CLIP text embedding of `template.format(name)` instead. Evaluation uses the same two
sources separately: category text (`val/miou_text`) and regions (`val/miou_region`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam_train.data.batch import SamBatch
from sam_train.models.sam.text import ClipPromptEncoder
from sam_train.training.prompts import PromptTargets, random_tensor


@dataclass
class TextPromptConfig:
    """The `prompt.text` config node.

    enabled: train and evaluate text prompts (needs model.text_embed_dim = the CLIP width).
    prob: chance weight of a text first prompt; the config feeds it to
        `InteractiveConfig.text_prob` (stage.module.interactive.text_prob), which the loop reads.
    clip: open_clip model name or model-config .json. pretrained: tag or local checkpoint file.
    cache_dir: open_clip's weight cache. freeze: keep CLIP frozen (and out of checkpoints).
    clip_lr_scale: lr multiplier of CLIP's parameters when not frozen.
    min_region_area: masks smaller than this (pixels at the model input) get no text prompt.
    crop_margin, crop_background: region crops (`sam_train.models.sam.text.region_crops`).
    category_ratio: share of text prompts taken from category names where there are some.
    template: phrase made from a category name.
    """

    enabled: bool = False
    prob: float = 0.25
    clip: str = "ViT-B-32"
    pretrained: str | None = "openai"
    cache_dir: str | None = None
    freeze: bool = True
    clip_lr_scale: float = 0.1
    min_region_area: int = 10000
    crop_margin: float = 0.25
    crop_background: float = 0.5
    category_ratio: float = 0.0
    template: str = "a photo of a {}."

    def build_encoder(self) -> ClipPromptEncoder:
        return ClipPromptEncoder.load(
            self.clip,
            self.pretrained,
            self.cache_dir,
            freeze=self.freeze,
            margin=self.crop_margin,
            background=self.crop_background,
        )


def category_names(batch: SamBatch, targets: PromptTargets) -> list[str | None]:
    """The category name of each target mask (None where the data has none)."""
    idx, slot = targets.image_index.tolist(), targets.slot.tolist()
    return [batch.categories[b][s] if batch.categories else None for b, s in zip(idx, slot)]


class TextPrompts:
    """Per-mask CLIP embeddings for a batch's target masks.

    Args:
        encoder: the CLIP wrapper. cfg: the text-prompt settings.
    """

    def __init__(self, encoder: ClipPromptEncoder, cfg: TextPromptConfig) -> None:
        self.encoder, self.cfg = encoder, cfg
        self._phrase_cache: dict[str, torch.Tensor] = {}  # frozen CLIP: one forward per name

    def large_enough(self, targets: PromptTargets) -> torch.Tensor:
        """[K] bool: masks above the region-size threshold."""
        return targets.masks.flatten(1).sum(1) >= self.cfg.min_region_area

    def regions(self, batch: SamBatch, targets: PromptTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """Region embeddings [K, E] and which are usable [K] (large enough, and present when
        precomputed: rows of zeros mean 'not computed')."""
        ok = self.large_enough(targets)
        if batch.region_embeds is not None:
            emb = batch.region_embeds[targets.image_index, targets.slot].float()  # [K, E]
            return emb, ok & (emb.norm(dim=-1) > 0)
        emb = targets.masks.new_zeros(targets.num_masks, self.encoder.embed_dim, dtype=torch.float)
        if ok.any():
            emb[ok] = self.encoder.encode_regions(
                batch.images, targets.masks[ok], targets.boxes[ok], targets.image_index[ok]
            ).to(emb.device)
        return emb, ok

    def phrases(self, phrases: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings [K, E] of phrases (None -> zeros) and which exist [K]."""
        ok = torch.tensor([p is not None for p in phrases], dtype=torch.bool)
        known = self._phrase_cache if self.cfg.freeze else {}  # a trained CLIP: no cache
        todo = sorted({p for p in phrases if p is not None and p not in known})
        if todo:
            fresh = dict(zip(todo, self.encoder.encode_text(todo)))  # [E] each
            if self.cfg.freeze:
                self._phrase_cache.update({p: e.detach() for p, e in fresh.items()})
            known = {**known, **fresh}
        zero = torch.zeros(self.encoder.embed_dim, device=self.encoder.device)
        emb = torch.stack([known[p] if p is not None else zero for p in phrases] or [zero])
        emb = emb[: len(phrases)]  # [K, E]
        return emb, ok.to(emb.device)

    def categories(
        self, batch: SamBatch, targets: PromptTargets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `template.format(category)` [K, E] and which masks have one [K]."""
        names = category_names(batch, targets)
        return self.phrases([self.cfg.template.format(n) if n else None for n in names])

    def for_training(
        self, batch: SamBatch, targets: PromptTargets, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding each mask is prompted with when its first prompt is text: the region,
        or (share `category_ratio`, where named) the category phrase. Returns [K, E], ok [K]."""
        emb, ok = self.regions(batch, targets)
        if self.cfg.category_ratio <= 0:
            return emb, ok
        cat, has = self.categories(batch, targets)
        draw = random_tensor((targets.num_masks,), has.device, generator)
        use = has & (draw < self.cfg.category_ratio) & self.large_enough(targets)
        return torch.where(use[:, None], cat.to(emb.device), emb), ok | use
