"""The stage-2 model as training builds it: a `Sam` of a size, optionally initialised from a
checkpoint, with low-rank adapters and frozen parts as asked. (The model stays a plain
nn.Module.)"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sam_train.models.lora import LoraConfig, add_lora, count_parameters
from sam_train.models.sam.sam import Sam, build_from_architecture
from sam_train.training.freezing import freeze_parts
from sam_train.weights.init import init_sam_from

log = logging.getLogger(__name__)


def _say(message: str) -> None:
    log.info(message)
    print(f"[sam-train] {message}", flush=True)


def trainable_sam(
    init_from: str | None = None,
    freeze: Sequence[str] = (),
    freeze_encoder: bool = False,
    peft: LoraConfig | None = None,
    **architecture,
) -> Sam:
    """`build_from_architecture(architecture)` (`encoder: tiny_vit` for a MobileSAM-family
    model, a ViT otherwise), then load `init_from` (a stage-1 checkpoint, exported
    encoder, timm / official MAE / official SAM weights), add adapters (`peft`) and freeze.

    Args:
        freeze: parts whose weights stay fixed (`image_encoder`, `prompt_encoder`,
            `mask_decoder.transformer`, ...); tensors `init_from` did not provide stay trainable.
        freeze_encoder: the older switch, the same as `freeze=[image_encoder]`.
        peft: LoRA settings; the base weights of every part holding an adapter are frozen.
    """
    sam = build_from_architecture(architecture)
    provided = None
    if init_from:
        report = init_sam_from(sam, init_from)
        _say(report.summary())
        sam.init_report = report
        provided = set(report.loaded)
    parts = list(dict.fromkeys(list(freeze) + (["image_encoder"] if freeze_encoder else [])))
    if parts and provided is None:
        _say(
            "model.freeze without model.init_from: no tensor was loaded, so nothing is frozen "
            f"and {', '.join(parts)} train from their random init"
        )
    kept = freeze_parts(sam, parts, provided if provided is not None else set())
    if peft is not None:  # adapters over the base the user chose, loaded or not
        adapted = add_lora(sam, peft)
        holders = sorted({name.split(".")[0] for name in adapted})
        kept += freeze_parts(sam, holders, provided)
        _say(
            f"LoRA rank {peft.rank}, alpha {peft.alpha:g} on {len(adapted)} layers "
            f"({', '.join(peft.targets)}); base weights of {', '.join(holders)} frozen"
        )
    kept = sorted(set(kept)) if provided is not None else []
    if kept:
        _say(
            f"{len(kept)} tensors of frozen parts stay trainable, init_from did not provide "
            f"them: {', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''}"
        )
    trainable, total = count_parameters(sam)
    _say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return sam
