"""What reading a weights file gives: the tensors, the layout they are in, the metadata, and
the error a file that cannot be used raises (shared by every reader: files, folders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sam_train.errors import UserError


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    layout: str
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


class WeightsError(UserError):
    """A weights file that cannot be used; the message names the file and the problem."""
