"""Collective helpers that work the same with one process and with many."""

from __future__ import annotations

import torch


def all_gather_objects(obj: list) -> list[list]:
    """Every rank's list, in rank order (one list when not distributed): for results that are
    Python objects rather than tensors (COCO records, per-mask arrays, picture panels)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
