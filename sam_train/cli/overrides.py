"""Command-line overrides checked before a run starts, so that a typo is one line and exit 2
(Hydra itself prints several lines and exits 1).

The overrides are parsed with Hydra's own grammar; a group choice is checked against the
option files on disk, and a `key=value` against the config that the group choices compose
(with "did you mean ..." from its real keys). Hydra's error messages are never parsed: when
Hydra refuses overrides for another reason, its message is shown, made one line.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from sam_train.config_checks import ConfigError

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override
    from omegaconf import DictConfig

# data groups that read no path of the user's: a path given to them is a missing data=...
SAMPLE_GROUPS = {
    "sam_sample": "data=shards_sam data.path=SHARDS (stage-2 shards of sam-prep)",
    "sample": "data=images data.root=FOLDER or data=shards_mae data.path=SHARDS",
}
# an old group option and the one that replaced it: it still works, with a one-line notice
RENAMED_OPTIONS = {("data", "coco"): "shards_sam"}
MAX_LISTED_KEYS = 12


def hydra_message_line(message: str) -> str:
    """Hydra's multi-line message as one line: the problem, the hint, the options."""
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


def _compose(config_name: str, args: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        return compose(config_name, overrides=args, return_hydra_config=True)


def parse_overrides(args: list[str]) -> list[Override]:
    """`args` in Hydra's override grammar; a line Hydra cannot parse is a `ConfigError`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for arg in args:  # one at a time, so the error names the one that is wrong
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as err:
            raise ConfigError(f"{arg}: {hydra_message_line(str(err))}") from None
    return parsed


def is_group_choice(override: Override, groups: dict[str, list[str]]) -> bool:
    """Whether `override` picks a config group's option (`model=sam_vit_b`, `hydra/launcher=x`)
    rather than setting a key (`model.mask_ratio=0.6`, `seed=1`)."""
    key = override.key_or_group
    return "/" in key or key in groups


def group_choice_problem(override: Override, groups: dict[str, list[str]]) -> str | None:
    """A group option that has no file in conf/ (Hydra's own groups are left to Hydra)."""
    group, value = override.key_or_group, override.value()
    if group not in groups or override.is_delete() or not isinstance(value, str):
        return None
    options = groups[group]
    if value in options or value.startswith("_"):
        return None
    close = difflib.get_close_matches(value, options, n=1)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return f"{group}={value}: there is no {group}/{value}.yaml; {hint}options: {', '.join(options)}"


def _node(cfg: Any, key: str) -> Any | None:
    """The config node at dotted `key` (a MISSING value counts as there), or None."""
    from omegaconf import DictConfig

    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or part not in node.keys():
            return None
        node = node._get_node(part)
    return node


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


def unknown_key_advice(key: str, cfg: DictConfig) -> str:
    """For a key the composed config does not have: 'did you mean ...?' from the real keys
    (Hydra's own advice, `+key=...`, adds a key nothing reads)."""
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
    where = (
        f"{parent} has: {', '.join(siblings[:MAX_LISTED_KEYS])}" if siblings else "no such group"
    )
    more = ", ..." if len(siblings) > MAX_LISTED_KEYS else ""
    return f"{key} is not a config key ({where}{more}); +{key}=VALUE adds a new key"


def renamed_option_notices(choices: dict) -> list[str]:
    """One line per group option used under its old name."""
    return [
        f"note: {group}={old} is now called {group}={new} (the old name still works)"
        for (group, old), new in RENAMED_OPTIONS.items()
        if choices.get(group) == old
    ]


def check_overrides(
    args: list[str], config_name: str = "train", check_data: bool = True
) -> DictConfig:
    """The config `args` compose to; a `ConfigError` (one line: what is wrong and the fix)
    when they do not compose or (`check_data`) name data that cannot be read. Runs before
    Hydra creates a run folder."""
    from sam_train.cli.help import config_groups
    from sam_train.config_checks import data_path_problems

    overrides = parse_overrides(args)
    groups = config_groups()
    for override in overrides:
        if override.is_sweep_override():
            raise ConfigError(
                f"{override.input_line}: several values sweep, which needs --multirun "
                f"(sam-{config_name} -m {override.input_line}); a list is key=[a,b], a string "
                "with a comma is key='a,b'"
            )
        problem = is_group_choice(override, groups) and group_choice_problem(override, groups)
        if problem:
            raise ConfigError(problem)
    try:
        cfg = _compose(config_name, args)
    except Exception as err:  # Hydra raises one type per kind of mistake
        raise ConfigError(explain_refusal(overrides, groups, config_name, err)) from None
    problems = data_path_problems(cfg, need_path=config_name == "train") if check_data else []
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def explain_refusal(
    overrides: list[Override], groups: dict[str, list[str]], config_name: str, err: Exception
) -> str:
    """Why Hydra refused to compose: a key the config does not have (looked up in the config
    the group choices compose to), else Hydra's own message, as one line."""
    choices = [o.input_line for o in overrides if is_group_choice(o, groups)]
    try:
        base = _compose(config_name, choices)
    except Exception:  # the group choices themselves do not compose: Hydra's message
        base = None
    if base is not None:
        for override in overrides:
            if is_group_choice(override, groups) or override.is_add() or override.is_force_add():
                continue
            key = override.key_or_group
            if _node(base, key) is None:
                return unknown_key_advice(key, base)
    cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
    return hydra_message_line(f"{err}{cause}")
