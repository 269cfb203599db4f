"""Training-only logic for SAM: prompt simulation and the interactive loss loop."""

from sam_train.training.interactive import (
    InteractiveConfig,
    InteractiveResult,
    interactive_loss,
    mask_only_rounds,
)
from sam_train.training.prompts import (
    PromptTargets,
    first_prompts,
    noisy_boxes,
    sample_error_points,
    sample_points_in,
    select_masks,
)

__all__ = [
    "InteractiveConfig",
    "InteractiveResult",
    "PromptTargets",
    "first_prompts",
    "interactive_loss",
    "mask_only_rounds",
    "noisy_boxes",
    "sample_error_points",
    "sample_points_in",
    "select_masks",
]
