"""The stage-2 model as training builds it: a `Sam` of a size, optionally initialised from a
checkpoint, with low-rank adapters and frozen parts as asked. (The model stays a plain
nn.Module.)"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sam_train.models.lora import LoraConfig, add_lora, count_parameters
from sam_train.models.sam.sam import Sam, build_from_architecture
from sam_train.training.freezing import freeze_parts, unloaded_parts
from sam_train.weights.decoder_transplant import transplant_decoder
from sam_train.weights.init import init_sam_from

log = logging.getLogger(__name__)


def _say(message: str, level: int = logging.INFO) -> None:
    """One line: through logging when the process configured it (a sam-train run: console and
    train.log), else printed (plain Python), never both."""
    if logging.getLogger().handlers:
        log.log(level, message)
    else:
        print(f"[sam-train] {message}", flush=True)


def trainable_sam(
    init_from: str | None = None,
    decoder_from: str | None = None,
    freeze: Sequence[str] = (),
    freeze_encoder: bool = False,
    freeze_new: bool = False,
    peft: LoraConfig | None = None,
    **architecture,
) -> Sam:
    """`build_from_architecture(architecture)` (`encoder: tiny_vit` for a MobileSAM-family
    model, a ViT otherwise), then load `init_from` (a stage-1 checkpoint, exported
    encoder, timm / official MAE / official SAM weights), add adapters (`peft`) and freeze.

    Args:
        decoder_from: a SAM checkpoint (any layout, ViT or TinyViT) whose prompt encoder and
            mask decoder replace the model's after `init_from`, with its encoder's output
            norm when `init_from` did not provide the model's (`transplant_decoder`). The
            decoder sizes must be the checkpoint's.
        freeze: parts whose weights stay fixed (`image_encoder`, `prompt_encoder`,
            `mask_decoder.transformer`, ...), with or without `init_from`; a part `init_from`
            left wholly at random init is frozen there, named in a warning.
        freeze_encoder: the older switch, the same as `freeze=[image_encoder]`.
        freeze_new: also freeze the tensors `init_from` did not provide inside a frozen part
            that it did partly load (a new neck); by default they train, and are listed.
        peft: LoRA settings; the base weights of every part holding an adapter are frozen.
    """
    sam = build_from_architecture(architecture)
    provided = None
    if init_from:
        report = init_sam_from(sam, init_from)
        _say(report.summary())
        sam.init_report = report
        provided = set(report.loaded)
    if decoder_from:
        adopted = transplant_decoder(sam, decoder_from, provided)
        norm = sorted(k for k in adopted if k.startswith("image_encoder."))
        _say(
            f"model.decoder_from={decoder_from}: prompt encoder and mask decoder"
            + (f", and the encoder's output norm ({norm[0].rsplit('.', 1)[0]})" if norm else "")
        )
        # the copied output norm stays a new tensor of the encoder for freezing: it trains
        # with a new neck, and a wholly random encoder is still frozen whole when asked
        provided = (provided or set()) | {k for k in adopted if k not in norm}
    parts = list(dict.fromkeys(list(freeze) + (["image_encoder"] if freeze_encoder else [])))
    random_parts = unloaded_parts(sam, parts, provided)
    if random_parts:
        why = "no model.init_from" if provided is None else "model.init_from provided none of it"
        _say(
            f"model.freeze: {', '.join(random_parts)} frozen at random init ({why})",
            logging.WARNING,
        )
    freeze_parts(sam, random_parts)
    loaded_parts = [p for p in parts if p not in random_parts]
    kept = freeze_parts(sam, loaded_parts, None if freeze_new else provided)
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
            f"them: {', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''} "
            "(model.freeze_new=true freezes them too)"
        )
    trainable, total = count_parameters(sam)
    _say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return sam
