"""A frozen helper model (a teacher, a frozen CLIP) that a training module uses but does not own.

Held as a plain attribute rather than a submodule, the helper is in no `state_dict`,
checkpoint, optimiser or export. Instead of hooking into how `nn.Module` moves its children,
the holder asks for the helper where it runs: `helper.on(device, dtype)` moves it there (in
place, only when it is elsewhere) and returns it.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class FrozenHelper:
    """A model frozen (no gradients) and kept in eval mode, outside its holder's registry.

    Args:
        module: the helper; its parameters are frozen here.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    def on(self, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
        """The helper on `device` (and, for its floating tensors, `dtype`), moved there first
        when it is not there yet."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        floating = [t for t in tensors if t.is_floating_point()]
        misplaced = any(t.device != device for t in tensors) or (
            dtype is not None and any(t.dtype != dtype for t in floating)
        )
        if misplaced:
            self.module.to(device=device, dtype=dtype)
        return self.module
