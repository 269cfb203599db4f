"""Stage 2: the LightningModule that trains a promptable segmenter (SAM) on masks.

A step: pick up to N masks per image, embed each image once, run the interactive prompt loop
(`sam_train.training.interactive`), log each loss term. Validation is a `SamValidation`
(`sam_train.evaluation.validation`: points, box, click curve, text and COCO figures, reduced
over ranks), the same object `sam-eval` scores with; this module embeds and logs.

Text prompts: the CLIP wrapper is held here, not in `Sam`; frozen, it is kept out of
this module's registry too, so neither checkpoints nor exports carry a copy of CLIP.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sam_train.data.batch import MAX_MASK_FRACTION, MIN_MASK_AREA, SamBatch
from sam_train.evaluation.validation import SamValidation
from sam_train.lit.base import StageModule
from sam_train.lit.optim import DerivedSchedule, OptimConfig, encoder_layer_id, param_groups
from sam_train.lit.progress import batches_started
from sam_train.lit.val_sources import val_source_names
from sam_train.models.frozen import FrozenHelper
from sam_train.models.lora import merge_lora_state
from sam_train.models.sam.sam import Sam
from sam_train.models.sam.text import ClipPromptEncoder
from sam_train.seeding import sample_seed
from sam_train.training.interactive import InteractiveConfig, interactive_loss
from sam_train.training.prompts import TEXT, PromptTargets, select_masks
from sam_train.training.text_prompts import TextPromptConfig, TextPrompts
from sam_train.training.unused_params import zero_touching

log = logging.getLogger(__name__)


class SamModule(StageModule, stage="sam", level=2):
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
        text: text prompts through CLIP (`prompt.text`); None or disabled = points and boxes.
        coco_eval: log `val/coco_mask_ap(50)` of box prompts when every mask has a category.
    """

    def __init__(
        self,
        model: Sam,
        optim: OptimConfig,
        interactive: InteractiveConfig | None = None,
        run_config: dict | None = None,
        max_masks_per_image: int = 64,
        min_mask_area: int = MIN_MASK_AREA,
        max_mask_fraction: float = MAX_MASK_FRACTION,
        val_max_masks: int = 16,
        val_max_clicks: int = 10,
        seed: int = 0,
        max_nonfinite: int = 20,
        text: TextPromptConfig | None = None,
        coco_eval: bool = True,
    ) -> None:
        super().__init__(run_config, seed, max_nonfinite)
        self.model = model
        self.optim = optim
        self.interactive = interactive or InteractiveConfig()
        self.max_masks_per_image = max_masks_per_image
        self.min_mask_area = min_mask_area
        self.max_mask_fraction = max_mask_fraction
        self.val_max_masks = val_max_masks
        self.val_max_clicks = val_max_clicks
        self.text_cfg = text if text is not None and text.enabled else None
        self._frozen_clip: FrozenHelper | None = None
        self._text = self._build_text(self.text_cfg)
        self.validation = SamValidation(
            val_max_masks,
            val_max_clicks,
            min_mask_area,
            max_mask_fraction,
            seed,
            coco_eval=coco_eval,
            text=self._text is not None,
        )
        self.last_val_metrics: dict[str, float] = {}
        self.derived: DerivedSchedule | None = None
        self.flops_per_batch: int | None = None

    @property
    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.image_encoder.parameters())

    # ------------------------------------------------------------------------- text branch
    def _build_text(self, cfg: TextPromptConfig | None) -> TextPrompts | None:
        """Load CLIP, check the model's text width against it, keep a frozen CLIP unregistered."""
        if cfg is None:
            return None
        encoder = cfg.build_encoder()
        width = self.model.prompt_encoder.text_embed_dim
        if width != encoder.embed_dim:
            raise ValueError(
                f"prompt.text.enabled=true with CLIP {cfg.clip} (embedding width "
                f"{encoder.embed_dim}) needs model.text_embed_dim={encoder.embed_dim}, "
                f"the model has {width}: add model.text_embed_dim={encoder.embed_dim}"
            )
        if cfg.freeze:
            self._frozen_clip = FrozenHelper(encoder)  # not a submodule: in no state_dict
        else:
            self.clip = encoder  # trained: a submodule, in checkpoints (not in the Sam export)
        return TextPrompts(encoder, cfg)

    @property
    def text(self) -> TextPrompts | None:
        """The text-prompt branch, its frozen CLIP (if any) on this module's device."""
        if self._frozen_clip is not None:
            self._frozen_clip.on(self.device, self.dtype)
        return self._text

    @property
    def clip_encoder(self) -> ClipPromptEncoder | None:
        return self.text.encoder if self.text is not None else None

    def _text_for_training(
        self, batch: SamBatch, targets: PromptTargets, gen: torch.Generator
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.text is None or self.interactive.text_prob <= 0 or targets.num_masks == 0:
            return None, None
        return self.text.for_training(batch, targets, gen)

    def _generator(self, stream: int) -> torch.Generator:
        key = sample_seed(self.seed + stream, batches_started(self.trainer), self.global_rank)
        return torch.Generator().manual_seed(key)

    # ------------------------------------------------------------------------- steps
    def training_step(self, batch: SamBatch, batch_idx: int) -> torch.Tensor | None:
        gen = self._generator(stream=0)
        targets = select_masks(
            batch, self.max_masks_per_image, self.max_mask_fraction, self.min_mask_area, gen
        )
        with torch.set_grad_enabled(self.encoder_trainable):
            embeddings = self.model.embed_images(
                batch.images
            )  # once per image, every round reuses it
        text_embeds, text_ok = self._text_for_training(batch, targets, gen)
        result = interactive_loss(
            self.model, embeddings, targets, self.interactive, gen, text_embeds, text_ok
        )
        loss = result.losses["loss"]
        if "clip" in self._modules:  # a trained CLIP: keep every parameter in the graph for DDP
            loss = loss + zero_touching(self.clip.parameters())
        if not self.guard.ok(loss, self):
            return None
        bs = batch.batch_size
        for name, value in result.losses.items():  # loss_focal, loss_dice, loss_iou, loss
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs)
        self.log("train/masks_per_image", targets.num_masks / bs, batch_size=bs)
        if targets.num_masks:
            self.log("train/iou_first_round", result.round_iou[0], batch_size=bs)
            self.log("train/iou_last_round", result.round_iou[-1], batch_size=bs)
        if text_ok is not None:
            share = (result.first_kinds == TEXT).float().mean()
            self.log("train/text_prompt_share", share, batch_size=bs)
        return loss

    def validation_step(self, batch: SamBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        targets = self.validation.select(batch, batch_idx)
        if targets.num_masks == 0:
            return
        embeddings = self.validation_embeddings(batch)
        self.validation.score(self.model, batch, targets, embeddings, dataloader_idx, self.text)

    def validation_embeddings(self, batch: SamBatch) -> torch.Tensor:
        """The image embeddings validation prompts run on (a subclass may log more)."""
        return self.model.embed_images(batch.images)

    def on_validation_epoch_start(self) -> None:
        # a mixture's validation sources, each reported as val/<source>/...
        self.validation.start_epoch(val_source_names(self.trainer))

    def on_validation_epoch_end(self) -> None:
        strategy = self.trainer.strategy

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return strategy.reduce(t.to(self.device), reduce_op="sum")

        by_source, metrics = self.validation.compute(reduce)
        for name, value in by_source.items():
            self.log(f"val/{name}", value)
        if not metrics:
            return
        self.last_val_metrics = metrics
        for name, value in metrics.items():  # already summed over ranks
            self.log(f"val/{name}", value, prog_bar=name == "miou_point_confident")

    # ------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        depth = self.model.image_encoder.depth
        # an encoder with its own block numbering (TinyViT's stages) says it; a ViT's is shared
        encoder_layer = getattr(self.model.image_encoder, "layer_id", None)

        def layer_of(name: str) -> int:
            if name.startswith("image_encoder."):
                name = name.removeprefix("image_encoder.")
                return encoder_layer(name) if encoder_layer else encoder_layer_id(name, depth)
            return depth + 1  # prompt encoder and mask decoder: full lr

        groups = param_groups(
            self.model,
            self.optim.weight_decay,
            no_decay_names=self.model.no_weight_decay(),
            layer_decay=self.optim.layer_decay,
            layer_of=layer_of,
            num_layers=depth,
            encoder_lr_scale=self.optim.encoder_lr_scale,
        )
        if "clip" in self._modules:  # a trained CLIP, at clip_lr_scale x the lr
            for group in param_groups(self.clip, self.optim.weight_decay):
                group.update(lr_scale=self.text_cfg.clip_lr_scale, name="clip_" + group["name"])
                groups.append(group)
        return self.optimizer_config(groups)

    # ------------------------------------------------------------------------- checkpoints, export
    def checkpoint_record(self) -> dict[str, Any]:
        return {**super().checkpoint_record(), "architecture": self.model.architecture}

    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        """The whole SAM in our layout, and its image encoder alone."""
        meta = self.export_meta()
        state = merge_lora_state(self.model.state_dict())  # adapters folded in: a plain SAM
        encoder = {
            k.removeprefix("image_encoder."): v
            for k, v in state.items()
            if k.startswith("image_encoder.")
        }
        return {
            "sam": (
                state,
                {**meta, "format": "sam_train.sam", "architecture": self.model.architecture},
            ),
            "encoder": (
                encoder,
                {
                    **meta,
                    "format": f"sam_train.{self.model.architecture.get('encoder', 'vit')}",
                    "architecture": self.model.image_encoder.architecture,
                },
            ),
        }
