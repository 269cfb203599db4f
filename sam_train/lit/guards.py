"""Non-finite losses: skip the step on every rank, count it, stop after too many in a row."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteLossGuard:
    """Decides whether a step's loss may be used.

    Args:
        max_consecutive: this many non-finite losses in a row stop the run (the last
            checkpoint, written before them, stays usable).
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def ok(self, loss: torch.Tensor, module: L.LightningModule) -> bool:
        bad = not bool(torch.isfinite(loss.detach()).all())
        # every rank skips together, or DDP would wait forever for the skipping rank's gradients
        bad = module.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        module.log("train/skipped_nonfinite", float(self.skipped), rank_zero_only=True)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} non-finite losses in a row (step {module.global_step}); "
                "the last checkpoint in checkpoints/ predates them. Lower optim.lr, set "
                "trainer.gradient_clip_val=1.0, or check the data for broken samples."
            )
        return False
