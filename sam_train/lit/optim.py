"""Optimiser settings, parameter groups by rule, and learning-rate schedules.

Everything derived (effective batch, learning rate, warm-up steps) is computed once in
`derive_schedule` so it can be printed at start-up and stored with the run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn


@dataclass
class OptimConfig:
    """AdamW and its schedule.

    Args:
        base_lr: learning rate per 256 images; the run uses `base_lr * effective_batch / 256`.
        lr: absolute learning rate; when set it is used as is and `base_lr` is ignored.
        weight_decay: decoupled weight decay; norms, biases, positional embeddings and tokens get none.
        betas: AdamW betas.
        schedule: "cosine" (to `min_lr`) or "step" (multiply by `gamma` at each of `milestones`).
        warmup_epochs / warmup_steps: linear warm-up length (steps win when both are set).
        min_lr: floor of the cosine decay.
        milestones: optimiser steps of the step decays, or fractions of the run when all < 1.
        gamma: factor of each step decay.
        layer_decay: layer-wise lr decay for the encoder (1.0 = off): block i of d gets
            `layer_decay ** (d - i)`, the patch embedding `layer_decay ** (d + 1)`.
        encoder_lr_scale: a further factor on the lr of the encoder's embeddings and blocks
            (stage 2: fine-tune a pretrained encoder gently while the new decoder learns fast).
    """

    base_lr: float = 1.5e-4
    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    min_lr: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    layer_decay: float = 1.0
    encoder_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.milestones = list(self.milestones)
        problems = []
        if self.schedule not in ("cosine", "step"):
            problems.append(f"optim.schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.base_lr <= 0 or (self.lr is not None and self.lr <= 0):
            problems.append("optim.base_lr and optim.lr must be positive")
        if self.weight_decay < 0:
            problems.append(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 < self.encoder_lr_scale <= 1:
            problems.append(
                f"optim.encoder_lr_scale must be in (0, 1], got {self.encoder_lr_scale}"
            )
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class DerivedSchedule:
    """Numbers derived from the config and the trainer, printed at start-up."""

    effective_batch: int
    lr: float
    total_steps: int
    warmup_steps: int
    milestones: list[int]

    def describe(self) -> str:
        return (
            f"effective batch {self.effective_batch} | lr {self.lr:.3g} | "
            f"{self.total_steps} optimiser steps, {self.warmup_steps} warm-up"
            + (f" | decays at {self.milestones}" if self.milestones else "")
        )

    def as_dict(self) -> dict:
        return asdict(self)


def derive_schedule(
    cfg: OptimConfig, effective_batch: int, total_steps: int, steps_per_epoch: float
) -> DerivedSchedule:
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * effective_batch / 256
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    else:
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(total_steps - 1, 0))
    milestones = cfg.milestones if cfg.schedule == "step" else []
    if milestones and all(m < 1 for m in milestones):
        milestones = [m * total_steps for m in milestones]
    return DerivedSchedule(effective_batch, lr, total_steps, warmup, [int(m) for m in milestones])


# The most any weight can move under Adam is about lr per step; below this total over a run
# (lr x steps) training leaves the weights where they started (e.g. 9.4e-6 x 160 steps).
MIN_TOTAL_LR = 0.01
# An absolute Adam lr that trains these models from scratch (the stage-2 CPU default); the
# warning suggests raising the lr only when the run's is below it.
TYPICAL_LR = 1e-3


def lr_warning(cfg: OptimConfig, derived: DerivedSchedule) -> str | None:
    """A message when the run's lr is too small for anything to happen in its steps."""
    total = derived.lr * derived.total_steps
    if total >= MIN_TOTAL_LR:
        return None
    origin = (
        f"optim.lr={cfg.lr:g}"
        if cfg.lr is not None
        else f"optim.base_lr {cfg.base_lr:g} x effective batch {derived.effective_batch} / 256"
    )
    fixes = []  # only the ones that apply: no advice to set what is already set
    if derived.lr < TYPICAL_LR:
        fixes.append(f"a larger lr (e.g. optim.lr={TYPICAL_LR:g})")
    if cfg.lr is None:
        fixes.append("a larger batch")
    fixes.append("more steps (trainer.max_steps / trainer.max_epochs)")
    return (
        f"lr {derived.lr:.3g} ({origin}) over {derived.total_steps} steps: Adam moves a weight "
        f"by at most ~lr per step, {total:.2g} in all, so the model will hardly change; give "
        + ", or ".join(fixes)
    )


def lr_factor(step: int, derived: DerivedSchedule, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimiser step `step` (linear warm-up, then decay)."""
    if step < derived.warmup_steps:
        return (step + 1) / derived.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m for m in derived.milestones)
    span = max(derived.total_steps - derived.warmup_steps, 1)
    progress = min((step - derived.warmup_steps) / span, 1.0)
    floor = cfg.min_lr / derived.lr
    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def encoder_layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise lr decay: embeddings 0, block i -> i + 1, the rest depth + 1."""
    if re.search(r"(^|\.)(patch_embed|pos_embed|cls_token)", name):
        return 0
    m = re.search(r"(^|\.)blocks\.(\d+)\.", name)
    if m:
        return int(m.group(2)) + 1
    return depth + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_names: set[str] = frozenset(),
    layer_decay: float = 1.0,
    layer_of: Callable[[str], int] | None = None,
    num_layers: int = 0,
    encoder_lr_scale: float = 1.0,
) -> list[dict]:
    """AdamW parameter groups by rule: 1-D parameters (norms, biases) and `no_decay_names`
    get no weight decay; with `layer_decay` < 1, `layer_of(name)` (0..num_layers + 1) scales
    each group's lr by `layer_decay ** (num_layers + 1 - layer)`, and layers 0..num_layers
    (embeddings and blocks) by `encoder_lr_scale` too. Frozen parameters are left out.
    Each group carries `lr_scale`, applied by the scheduler."""
    by_layer = layer_of is not None and (layer_decay < 1.0 or encoder_lr_scale != 1.0)
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in no_decay_names
        layer = layer_of(name) if by_layer else num_layers + 1
        key = (decay, layer)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer)
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale * (encoder_lr_scale if layer <= num_layers else 1.0),
                "name": ("decay" if decay else "no_decay") + (f"_layer{layer}" if by_layer else ""),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(
    groups: list[dict], cfg: OptimConfig, derived: DerivedSchedule
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `groups` and a per-step scheduler honouring each group's `lr_scale`."""
    fused = all(p.is_cuda for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=derived.lr, betas=cfg.betas, fused=fused or None)
    scales = [g.get("lr_scale", 1.0) for g in opt.param_groups]
    lambdas = [
        (lambda step, s=s: s * lr_factor(step, derived, cfg))
        for s in scales  # noqa: B023
    ]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
