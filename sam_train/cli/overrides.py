"""Command-line overrides checked before a run starts, so that a typo is one line and exit 2
(Hydra itself prints several lines and exits 1)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig


def one_line(message: str) -> str:
    """Hydra's multi-line composition error as one line: the problem, the hint, the options."""
    lines = [line.strip() for line in message.strip().splitlines()]
    head, options, in_options = [], [], False
    for line in lines:
        if line.startswith("Available options in"):
            in_options = True
        elif line.startswith("Config search path"):
            break
        elif in_options and line:
            options.append(line)
        elif line and not line.startswith(("full_key:", "object_type=", "Set the environment")):
            head.append(line.rstrip("."))
    text = "; ".join(head) or "invalid override"
    return f"{text} (options: {', '.join(options)})" if options else text


_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")
# data groups that read no path of the user's: a path given to them is a missing data=...
SAMPLE_GROUPS = {
    "sam_sample": "data=shards_sam data.path=SHARDS (stage-2 shards of sam-prep)",
    "sample": "data=images data.root=FOLDER or data=shards_mae data.path=SHARDS",
}
# an old group option and the one that replaced it: it still works, with a one-line notice
RENAMED_OPTIONS = {("data", "coco"): "shards_sam"}


def _compose(config_name: str, args: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        return compose(config_name, overrides=args, return_hydra_config=True)


def _full_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key path of a config (`trainer.max_steps`, ...), without resolving values."""
    from omegaconf import DictConfig

    keys = []
    for key in node.keys() if isinstance(node, DictConfig) else ():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys += _full_keys(child, f"{path}.")
    return keys


def unknown_key_advice(args: list[str], message: str, config_name: str = "train") -> str | None:
    """For an override of a key the config does not have: 'did you mean ...?' from the real
    keys (Hydra's own advice, `+key=...`, adds a key nothing reads); None for other errors."""
    import difflib

    found = _UNKNOWN_KEY.search(message)
    if not found or "not in struct" not in message:
        return None
    key = found.group(1)
    rest = [a for a in args if a.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = _compose(config_name, rest)
    except Exception:  # another mistake as well: Hydra's message for this one
        return None
    parent, _, leaf = key.rpartition(".")
    choice = cfg.hydra.runtime.choices.get(parent) if parent else None
    if parent == "data" and leaf in ("path", "val_path", "root") and choice in SAMPLE_GROUPS:
        return (
            f"{key}: data={choice} is the embedded sample and reads no path of yours; "
            f"to train on your data add {SAMPLE_GROUPS[choice]}"
        )
    keys = [k for k in _full_keys(cfg) if not k.startswith("hydra")]
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if parent in keys or not parent:  # a mistyped key in a real group: compare the last part
        close = [f"{parent}.{c}".lstrip(".") for c in difflib.get_close_matches(leaf, siblings, 1)]
    else:  # a mistyped group: compare the whole path with keys as deep
        same_depth = [k for k in keys if k.count(".") == key.count(".")]
        close = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.75)
    if close:
        return f"{key} is not a config key; did you mean {close[0]}?"
    where = f"{parent} has: {', '.join(siblings[:12])}" if siblings else "no such group"
    more = ", ..." if len(siblings) > 12 else ""
    return f"{key} is not a config key ({where}{more}); +{key}=VALUE adds a new key"


def renamed_option_notices(choices: dict) -> list[str]:
    """One line per group option used under its old name."""
    return [
        f"note: {group}={old} is now called {group}={new} (the old name still works)"
        for (group, old), new in RENAMED_OPTIONS.items()
        if choices.get(group) == old
    ]


def composition_error(args: list[str], config_name: str = "train") -> str | None:
    """Why the overrides in `args` do not compose or name data that cannot be read (one
    line), or None when they are fine. Runs before Hydra creates a run folder."""
    from sam_train.config_checks import data_path_problems

    try:
        cfg = _compose(config_name, args)
    except Exception as err:  # Hydra raises one type per kind of mistake
        cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
        text = f"{err}{cause}"
        return unknown_key_advice(args, text, config_name) or one_line(text)
    problems = data_path_problems(cfg, need_path=config_name == "train")
    return "; ".join(problems) if problems else None
