"""Keeping every trainable parameter in the graph of every step.

DDP all-reduces the gradient of every trainable parameter after each backward and waits for
all of them; a parameter the step did not use (an optional prompt branch, text projection or
CLIP with no text this step, a batch with no valid mask) never gets one and multi-GPU
training hangs. `zero_touching(params)` is a scalar zero whose graph reaches each of them:
added to the loss it gives them a zero gradient and changes nothing else. Any new optional
branch adds its parameters here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def zero_touching(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """0.0, with a zero gradient for each trainable parameter of `params`."""
    used = [p.sum() for p in params if p.requires_grad]
    return sum(used[1:], used[0]) * 0.0 if used else torch.zeros(())
