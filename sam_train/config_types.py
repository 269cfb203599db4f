"""Config values checked against the annotations of the constructor they are passed to.

Hydra passes `trainer.max_epochs=abc` to `Trainer(max_epochs="abc")` as it is; the mistake then
surfaces as a `TypeError` deep inside a training loop. Checked before instantiation, it is one
line naming the key. Only numbers and switches are checked (int, float, bool, None and unions
of them); anything richer, text included (a number passed as text converts), is left to the
constructor.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PLAIN = {int: "an integer", float: "a number", bool: "true or false"}


def _plain_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain types an annotation allows (type(None) included), or None when it is richer."""
    if annotation in _PLAIN:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        allowed: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                allowed += (type(None),)
            elif arg in _PLAIN:
                allowed += (arg,)
            else:
                return None
        return allowed
    return None


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # a bool is an int to Python, not to a config
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return isinstance(value, tuple(t for t in allowed if t is not type(None)))


def _hints(target: str) -> dict[str, Any]:
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        return typing.get_type_hints(fn)
    except Exception:  # an unresolvable annotation: leave the checking to the constructor
        return {}


def argument_type_problems(node: DictConfig, key: str) -> list[str]:
    """One line per value of `node` that its `_target_`'s annotation cannot take."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return []
    hints = _hints(str(target))
    problems = []
    for name, annotation in hints.items():
        allowed = _plain_types(annotation)
        if allowed is None or name not in node or OmegaConf.is_missing(node, name):
            continue
        try:
            value = node[name]
        except Exception:  # an interpolation that does not resolve: Hydra reports it
            continue
        if isinstance(value, DictConfig | list) or OmegaConf.is_config(value):
            continue
        if not _fits(value, allowed):
            shown = [t for t in allowed if not (t is int and float in allowed)]
            wants = " or ".join(_PLAIN.get(t, "null") for t in shown)
            problems.append(f"{key}.{name}={value}: expected {wants}")
    return problems
