"""The stage-1 model as training builds it: a `MaskedAutoencoder`, optionally initialised from
a checkpoint to continue pretraining on new images. (The model stays a plain nn.Module.)"""

from __future__ import annotations

import logging

from sam_train.models.mae import MaskedAutoencoder
from sam_train.weights.init import init_mae_from

log = logging.getLogger(__name__)


def trainable_mae(init_from: str | None = None, **architecture) -> MaskedAutoencoder:
    """`MaskedAutoencoder(**architecture)`, then load `init_from`: official MAE, timm, our
    stage-1 checkpoints and exports, or the image encoder of a SAM checkpoint."""
    mae = MaskedAutoencoder(**architecture)
    if init_from:
        report = init_mae_from(mae, init_from)
        log.info(report.summary())
        print(f"[sam-train] {report.summary()}", flush=True)
    return mae
