"""`sam-train --help`, printed from the composed config and the config folders on disk.

Hydra's own help composes every option of every group (its own groups too) to list them,
which is slow with as many options as ours; reading the folder names is not. The text is
Hydra's: the same template (`hydra.help` in conf/hydra/default.yaml), groups and composed
config, under a usage line that says how sam-train and sam-eval take their options.
"""

from __future__ import annotations

import string
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

import sam_train.conf

CONF = Path(sam_train.conf.__file__).parent


# sam-train and sam-eval take Hydra overrides, not --flags: a run is its composed config
HYDRA_STYLE_USAGE = """usage: {prog} {first}[group=option ...] [key=value ...]

Options are Hydra overrides, not --flags: group=option picks a config file (data=shards_sam),
key=value sets one key ({key_example}), -m sweeps comma-separated values (seed=1,2,3)."""
INTERNAL_GROUPS = ("code_defaults",)  # nodes other configs build on, not options to pick


def config_groups(root: Path = CONF) -> dict[str, list[str]]:
    """Group name ('model', 'hydra/launcher', ...) -> the options a user picks (yaml file
    stems; shared bases such as `model/_sam` and the generated `code_defaults` left out)."""
    groups = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if folder.name in INTERNAL_GROUPS:
            continue
        options = sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))
        if options:
            groups[folder.relative_to(root).as_posix()] = options
    return groups


def help_text(cfg: DictConfig) -> str:
    """The help of `cfg`, a run config composed with its `hydra` node (return_hydra_config)."""
    cfg = cfg.copy()
    template = cfg.hydra.help.template
    app_groups = "".join(
        f"{name}: {', '.join(options)}\n"
        for name, options in config_groups().items()
        if name != "hydra" and not name.startswith("hydra/")
    )
    with open_dict(cfg):
        del cfg["hydra"]
    text = string.Template(template).safe_substitute(
        APP_CONFIG_GROUPS=app_groups,
        CONFIG=OmegaConf.to_yaml(cfg),
        FLAGS_HELP="Hydra's options: sam-train --hydra-help\n",
        HYDRA_CONFIG_GROUPS="",
    )
    return f"{HYDRA_STYLE_USAGE.format(prog='sam-train', first='', key_example='optim.lr=1e-4')}\n\n{text}"


def wants_help(args: list[str]) -> bool:
    """`--help`/`-h` alone with overrides; any other flag goes to Hydra itself."""
    flags = [a for a in args if a.startswith("-")]
    return bool(flags) and all(f in ("--help", "-h") for f in flags)
