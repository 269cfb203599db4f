"""The stage-2 model as training builds it: a `Sam` of a size, optionally initialised from a
checkpoint, optionally with a frozen image encoder. (The model itself stays a plain nn.Module.)"""

from __future__ import annotations

import logging

from sam_train.models.sam.sam import Sam, build_sam
from sam_train.weights.init import InitReport, init_sam_from

log = logging.getLogger(__name__)


def trainable_sam(
    init_from: str | None = None, freeze_encoder: bool = False, **architecture
) -> Sam:
    """`build_sam(**architecture)`, then load `init_from` (a stage-1 checkpoint, exported
    encoder, timm / official MAE / official SAM weights) and freeze the encoder if asked."""
    sam = build_sam(**architecture)
    report = None
    if init_from:
        report = init_sam_from(sam, init_from)
        log.info(report.summary())
        print(f"[sam-train] {report.summary()}", flush=True)
        sam.init_report = report
    if freeze_encoder:
        kept = freeze_loaded_encoder(sam, report)
        if report is None:
            message = (
                "model.freeze_encoder=true without model.init_from: no tensor was loaded, so "
                "nothing is frozen and the whole (random) image encoder trains"
            )
        elif kept:
            message = (
                f"model.freeze_encoder=true froze the image-encoder tensors loaded from "
                f"{report.source}; {len(kept)} it did not provide stay trainable (frozen, "
                f"they would keep their random init): {_short(kept)}"
            )
        if report is None or kept:
            log.info(message)
    return sam


def freeze_loaded_encoder(sam: Sam, report: InitReport | None) -> list[str]:
    """Freeze the image encoder's parameters that `report` says were loaded from the
    checkpoint; the rest (new in this architecture, e.g. the neck and relative-position
    tables after an MAE encoder, or all of them without a checkpoint) stay trainable.
    Returns the names kept trainable."""
    loaded = set(report.loaded) if report is not None else set()
    kept = []
    for name, param in sam.image_encoder.named_parameters(prefix="image_encoder"):
        if name in loaded:
            param.requires_grad_(False)
        else:
            kept.append(name)
    return kept


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n})" if len(names) > n else "")
