"""Freezing named parts of a model for fine-tuning.

A part is any module name (`image_encoder`, `prompt_encoder`, `mask_decoder.transformer`,
`image_encoder.blocks.0`) or a parameter name. Adapter tensors (`lora_A`, `lora_B`) are never
frozen. When the model was initialised from a checkpoint, the tensors it did not provide inside
a partly loaded part (a new neck, relative-position tables) stay trainable unless asked
otherwise: frozen, they would stay random for good. A part of which nothing was loaded is
frozen as asked, at its random init (a frozen random encoder is a legitimate probe); the
caller names such parts in a warning (`unloaded_parts`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from sam_train.errors import UserError


class FreezeError(UserError):
    """A `model.freeze` entry that names nothing in the model."""


def part_names(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Module names down to `max_depth` dots, without numbered children: what `freeze` takes."""
    return [
        n
        for n, _ in model.named_modules()
        if n and n.count(".") < max_depth and not any(p.isdigit() for p in n.split("."))
    ]


def parameters_of(model: nn.Module, part: str) -> list[str]:
    """Names of the parameters of one part (a module or a parameter name)."""
    if part in dict(model.named_parameters()):
        return [part]
    try:
        module = model.get_submodule(part)
    except AttributeError:
        import difflib

        close = difflib.get_close_matches(part, part_names(model), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise FreezeError(
            f"model.freeze entry {part!r} names no part of the model; {hint}parts: "
            + ", ".join(part_names(model, max_depth=1))
            + " or any module inside one (e.g. mask_decoder.transformer, image_encoder.blocks.0)"
        ) from None
    return [f"{part}.{n}" for n, _ in module.named_parameters()]


def freeze_parts(
    model: nn.Module, parts: Iterable[str], provided: set[str] | None = None
) -> list[str]:
    """Set `requires_grad=False` on every parameter of `parts`, except adapter tensors and,
    when `provided` (the state-dict keys a checkpoint loaded) is given, the parameters it did
    not provide. Returns the names kept trainable for that second reason."""
    params = dict(model.named_parameters())
    kept: list[str] = []
    for part in parts:
        for name in parameters_of(model, part):
            if name.endswith((".lora_A", ".lora_B")):
                continue
            if provided is not None and name not in provided:
                kept.append(name)
                continue
            params[name].requires_grad_(False)
    return sorted(set(kept))


def unloaded_parts(model: nn.Module, parts: Iterable[str], provided: set[str] | None) -> list[str]:
    """The parts none of whose parameters `provided` holds (all of them without a checkpoint):
    frozen, they stay at their random init."""
    return [p for p in parts if not set(parameters_of(model, p)) & (provided or set())]
