"""SAM's interactive training loop (Kirillov et al., 2023, appendix A), as one function.

Per step: the image embeddings are computed once by the caller; every mask then goes through
`num_rounds` decoder rounds on that embedding:
  round 0         the first prompt (a uniform foreground point, a noisy box, or a text
                  embedding: CLIP of the mask's region or of its category name);
  click rounds    one corrective point from the error region of the previous prediction, plus
                  the previous round's low-res logits (of its highest-IoU output) as mask prompt;
  mask-only rounds the previous logits without a new point: one at a random place among the click
                  rounds and one at the end (`num_mask_only_rounds` = 2 in SAM).
Only round 0 gives a point prompt its 3 multimask outputs (an ambiguous single point; the loss
goes to the best of them); boxes and later rounds use the single-mask output. The mask prompt
is detached (SAM / sam2 practice: no backpropagation through earlier rounds' predictions);
the image embedding receives gradients from every round. Losses are averaged over rounds.

Memory: every round's decoder graph lives until the step's backward, so it grows with masks x
rounds (benchmarks/README.md has the measured size per mask-round at sam_vit_b).
`checkpoint_rounds` keeps only each round's inputs and recomputes its decoder forward during
the backward (the image encoder still runs once): the same gradients for one more decoder
forward per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from sam_train.data.batch import image_regions
from sam_train.losses import mask_iou_of_logits, masks_to_logit_size, sam_loss
from sam_train.models.sam.sam import Sam, upscale_logits
from sam_train.training.prompts import (
    PAD,
    POINT,
    TEXT,
    PromptTargets,
    first_prompts,
    random_tensor,
    sample_error_points,
)
from sam_train.training.unused_params import zero_touching

LOSS_NAMES = ("loss_focal", "loss_dice", "loss_iou", "loss")


@dataclass
class InteractiveConfig:
    """How prompts are simulated in one training step (defaults: SAM's recipe).

    num_click_rounds: rounds that add one corrective point (8).
    num_mask_only_rounds: rounds with no new point (2): one at the end, the others at random
        places among the click rounds.
    point_prob, box_prob, text_prob: chances of each first-prompt kind.
    box_noise_frac, box_max_noise: box jitter, std = frac x side, at most this many pixels.
    multimask_first_round: give single-point first prompts the 3 ambiguity outputs.
    detach_mask_prompt: stop gradients through the previous round's logits.
    loss_weights: overrides of `sam_train.losses.LOSS_WEIGHTS`.
    checkpoint_rounds: recompute each round's decoder forward in the backward instead of
        holding its activations (memory of one round instead of all; same gradients).
    """

    num_click_rounds: int = 8
    num_mask_only_rounds: int = 2
    point_prob: float = 0.5
    box_prob: float = 0.5
    text_prob: float = 0.0
    box_noise_frac: float = 0.1
    box_max_noise: float = 20.0
    multimask_first_round: bool = True
    detach_mask_prompt: bool = True
    loss_weights: dict[str, float] = field(default_factory=dict)
    checkpoint_rounds: bool = True

    @property
    def num_rounds(self) -> int:
        return 1 + self.num_click_rounds + self.num_mask_only_rounds


@dataclass
class InteractiveResult:
    """What a step gets back from `interactive_loss`.

    losses:       `loss_focal`, `loss_dice`, `loss_iou`, `loss`, each averaged over rounds (scalars).
    round_iou:    [R] mean IoU (at logit size, detached) of the chosen mask after each round.
    final_logits: [K, 1, 4h, 4w] the last round's logits (detached), e.g. for pictures.
    first_kinds:  [K] first-prompt kind of each mask (0 point, 1 box, 2 text).
    """

    losses: dict[str, torch.Tensor]
    round_iou: torch.Tensor
    final_logits: torch.Tensor
    first_kinds: torch.Tensor


def mask_only_rounds(cfg: InteractiveConfig, generator: torch.Generator | None = None) -> set[int]:
    """Indices (1..R-1) of the rounds without a new point: the last one, plus random others."""
    last = cfg.num_rounds - 1
    if cfg.num_mask_only_rounds <= 0:
        return set()
    inner = list(range(1, last))  # places among the click rounds
    n = min(cfg.num_mask_only_rounds - 1, len(inner))
    picks = random_tensor((len(inner),), torch.device("cpu"), generator).argsort()[:n].tolist()
    return {last} | {inner[i] for i in picks}


def _first_round_outputs(
    kinds: torch.Tensor, cfg: InteractiveConfig, num_outputs: int
) -> torch.Tensor:
    """[K, 1 + num_multimask] bool: which outputs each prompt may use in round 0."""
    valid = torch.zeros(kinds.shape[0], num_outputs, dtype=torch.bool, device=kinds.device)
    multi = (kinds == POINT) & cfg.multimask_first_round
    valid[:, 0] = ~multi
    valid[:, 1:] = multi[:, None]
    return valid


def _most_confident(
    logits: torch.Tensor, iou_pred: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """The output with the highest predicted IoU (among `valid` ones): [K, m, h, w] -> [K, 1, h, w].

    It is the next round's mask prompt and the prediction the next click corrects (SAM).
    """
    scores = iou_pred.detach()
    if valid is not None:
        scores = scores.masked_fill(~valid, -torch.inf)
    best = scores.argmax(dim=1)[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
    return logits.gather(1, best)


def _zero_result(
    sam: Sam, image_embeddings: torch.Tensor, cfg: InteractiveConfig
) -> InteractiveResult:
    """No valid mask: zero losses whose graph still reaches every parameter (no DDP hang)."""
    dev = image_embeddings.device
    points = (torch.zeros(1, 1, 2, device=dev), torch.full((1, 1), PAD, device=dev))
    logits, iou = sam.decode(
        image_embeddings[:1],
        points=points,
        mask_inputs=torch.zeros(1, 1, *[4 * s for s in image_embeddings.shape[-2:]], device=dev),
        multimask_output=None,
    )
    zero = (logits.sum() + iou.sum()) * 0.0 + zero_touching(sam.parameters())
    return InteractiveResult(
        losses={name: zero for name in LOSS_NAMES},
        round_iou=torch.zeros(cfg.num_rounds, device=dev),
        final_logits=logits[:0, :1].detach(),
        first_kinds=torch.zeros(0, dtype=torch.long, device=dev),
    )


def _text_tokens(
    sam: Sam, text_embeds: torch.Tensor | None, kinds: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Text embeddings as one sparse token per mask [K, 1, E] and which are real [K] (TEXT
    first prompts); every mask passes through `text_proj`, so it is always in the graph."""
    if text_embeds is None or sam.prompt_encoder.text_proj is None:
        return None, None
    return text_embeds[:, None].to(sam.prompt_encoder.text_proj.weight.dtype), kinds == TEXT


def _decode_round(
    sam: Sam,
    targets: PromptTargets,
    is_text: torch.Tensor | None,
    gt_low: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: InteractiveConfig,
    image_embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None,
    text_tokens: torch.Tensor | None,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One round: decode every mask's prompts, then SAM's losses (a pure function of its
    inputs, so it can be recomputed by activation checkpointing)."""
    logits, iou_pred = sam.decode(
        image_embeddings,
        points=(coords, labels),
        mask_inputs=mask_input,
        text_embeds=text_tokens,
        image_index=targets.image_index,
        multimask_output=None if first else False,
        pad_points=False,
        text_valid=is_text,
    )  # [K, m, 4h, 4w], [K, m]
    return logits, iou_pred, sam_loss(logits, iou_pred, gt_low, valid, cfg.loss_weights)


def interactive_loss(
    sam: Sam,
    image_embeddings: torch.Tensor,
    targets: PromptTargets,
    cfg: InteractiveConfig | None = None,
    generator: torch.Generator | None = None,
    text_embeds: torch.Tensor | None = None,
    text_ok: torch.Tensor | None = None,
) -> InteractiveResult:
    """Simulate `cfg.num_rounds` prompting rounds for every target mask and average their losses.

    Args:
        sam: the model; only `decode` is called (embeddings come from the caller).
        image_embeddings: [B, C, h, w] = `sam.embed_images(images)`, with gradients.
        targets: the K masks to train on (`select_masks`).
        cfg: the prompt recipe.
        generator: random source for prompts and round order.
        text_embeds: [K, E] L2-normalised CLIP embedding per mask (region or category text);
            a mask whose first prompt is text keeps that token in every round.
        text_ok: [K] bool, masks whose `text_embeds` row is usable (others never get text).
    """
    cfg = cfg or InteractiveConfig()
    k = targets.num_masks
    if k == 0:
        return _zero_result(sam, image_embeddings, cfg)
    size = targets.masks.shape[-1]
    low_size = tuple(4 * s for s in image_embeddings.shape[-2:])
    gt_low = masks_to_logit_size(targets.masks, low_size)  # [K, 4h, 4w] soft targets, once
    region = image_regions(targets.image_hw, k, size, targets.masks.device)  # [K, S, S]
    coords, labels, kinds = first_prompts(
        targets,
        cfg.point_prob,
        cfg.box_prob,
        cfg.text_prob,
        cfg.box_noise_frac,
        cfg.box_max_noise,
        generator,
        text_ok if text_embeds is not None else None,
    )  # [K, 2, 2], [K, 2], [K]
    text_tokens, is_text = _text_tokens(sam, text_embeds, kinds)
    no_point = mask_only_rounds(cfg, generator)

    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    round_iou, mask_input, chosen = [], None, None
    for r in range(cfg.num_rounds):
        if r > 0 and r not in no_point:
            pred = (upscale_logits(chosen, (size, size)) > sam.mask_threshold)[:, 0]  # [K, S, S]
            pt, lab = sample_error_points(pred, targets.masks, region, generator)
            coords = torch.cat([coords, pt[:, None]], dim=1)  # [K, N+1, 2]
            labels = torch.cat([labels, lab[:, None]], dim=1)  # [K, N+1]
        valid = (
            _first_round_outputs(kinds, cfg, sam.mask_decoder.num_mask_tokens) if r == 0 else None
        )
        args = (image_embeddings, coords, labels, mask_input, text_tokens, r == 0)
        if cfg.checkpoint_rounds and torch.is_grad_enabled():
            logits, iou_pred, losses = checkpoint(
                _decode_round, sam, targets, is_text, gt_low, valid, cfg, *args, use_reentrant=False
            )
        else:
            logits, iou_pred, losses = _decode_round(
                sam, targets, is_text, gt_low, valid, cfg, *args
            )
        for name in LOSS_NAMES:
            totals[name] = totals[name] + losses[name]

        kept = _most_confident(logits, iou_pred, valid)  # [K, 1, 4h, 4w]
        chosen = kept.detach()
        mask_input = chosen if cfg.detach_mask_prompt else kept
        round_iou.append(mask_iou_of_logits(chosen[:, 0], gt_low).mean())

    if text_tokens is None and sam.prompt_encoder.text_proj is not None:
        # no text this step: keep text_proj in the graph (zero gradient) so DDP never waits on it
        touch = zero_touching(sam.prompt_encoder.text_proj.parameters())
        totals = {name: value + touch for name, value in totals.items()}
    return InteractiveResult(
        losses={name: value / cfg.num_rounds for name, value in totals.items()},
        round_iou=torch.stack(round_iou),
        final_logits=chosen,
        first_kinds=kinds,
    )
