"""The stage-2 model as training builds it: a `Sam` of a size, optionally initialised from a
checkpoint, optionally with a frozen image encoder. (The model itself stays a plain nn.Module.)"""

from __future__ import annotations

import logging

from sam_train.models.sam.sam import Sam, build_sam
from sam_train.weights.init import init_sam_from

log = logging.getLogger(__name__)


def trainable_sam(
    init_from: str | None = None, freeze_encoder: bool = False, **architecture
) -> Sam:
    """`build_sam(**architecture)`, then load `init_from` (a stage-1 checkpoint, exported
    encoder, timm / official MAE / official SAM weights) and freeze the encoder if asked."""
    sam = build_sam(**architecture)
    if init_from:
        report = init_sam_from(sam, init_from)
        log.info(report.summary())
        print(f"[sam-train] {report.summary()}", flush=True)
        sam.init_report = report
    if freeze_encoder:
        sam.image_encoder.requires_grad_(False)
    return sam
