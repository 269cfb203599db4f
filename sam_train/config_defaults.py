"""Code defaults as Hydra config nodes, so each default lives in one place.

A config file names the class or function it builds in its defaults list,

    defaults:
      - /code_defaults/sam_train.data.shard_datamodules.ShardSamDataModule@_here_
      - _self_

and holds only what differs. The node `conf/code_defaults/<target>.yaml` is generated from the
target's signature: `_target_` plus every argument that has a default (dataclass fields,
constructor or function keywords; a class whose `__init__` takes `**kwargs` adds its base
class's arguments). So `data.batch_size=8` overrides a key the YAML never wrote.

The nodes are committed files, written by `make configs` (`python -m sam_train.config_defaults`)
after a signature changes; a test regenerates them and fails when one is stale or missing.
Composing a config therefore reads plain YAML and imports no model code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import OmegaConf

GROUP = "code_defaults"
CONF_DIR = Path(__file__).parent / "conf"
HEADER = (
    "# generated from the signature of _target_ by `make configs`: edit the code, not this file"
)
# arguments `sam-train` passes itself (to the stage module, to the Trainer), never from the config
PASSED_AT_RUN_TIME = frozenset({"model", "optim", "run_config", "callbacks", "logger"})
_ENTRY = re.compile(rf"^\s*-\s*/{GROUP}/([\w.]+)@", re.MULTILINE)


def _plain(value: Any) -> Any:
    """Tuples as lists (what YAML gives back), everything else as is."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _signature_defaults(fn: Any) -> tuple[dict[str, Any], bool]:
    """(arguments with a default, whether it takes **kwargs)."""
    out, var_kw = {}, False
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.default is not p.empty and name not in PASSED_AT_RUN_TIME:
            out[name] = _plain(p.default)
    return out, var_kw


def defaults_of(target: str) -> dict[str, Any]:
    """`{"_target_": target, argument: default, ...}` for a dotted class or function path."""
    obj = get_object(target)
    if dataclasses.is_dataclass(obj):
        return {"_target_": target, **_dataclass_defaults(obj)}
    if not inspect.isclass(obj):
        return {"_target_": target, **_signature_defaults(obj)[0]}
    found: dict[str, Any] = {}
    for cls in obj.__mro__:  # a subclass's defaults win; **kwargs hands on to the base
        if "__init__" not in vars(cls):
            continue
        own, var_kw = _signature_defaults(cls.__init__)
        found = {**own, **found}
        if not var_kw:
            break
    return {"_target_": target, **found}


def referenced_targets(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every target a config file names as `/code_defaults/<target>@...` in its defaults."""
    files = [f for f in conf_dir.rglob("*.yaml") if GROUP not in f.relative_to(conf_dir).parts]
    return sorted({t for f in files for t in _ENTRY.findall(f.read_text())})


def node_text(target: str) -> str:
    """The YAML of `target`'s node, as committed."""
    body = OmegaConf.to_yaml(OmegaConf.create(defaults_of(target)), sort_keys=False)
    return f"{HEADER}\n{body}"


def write_nodes(conf_dir: Path = CONF_DIR) -> list[Path]:
    """(Re)write the node of every referenced target and remove nodes nobody references;
    returns the files changed."""
    from sam_train.files import write_text_atomic

    folder = conf_dir / GROUP
    folder.mkdir(exist_ok=True)
    wanted = {folder / f"{t}.yaml": node_text(t) for t in referenced_targets(conf_dir)}
    changed = []
    for path, text in wanted.items():
        if not path.exists() or path.read_text() != text:
            write_text_atomic(path, text)
            changed.append(path)
    for path in folder.glob("*.yaml"):
        if path not in wanted:
            path.unlink()
            changed.append(path)
    return changed


if __name__ == "__main__":
    for changed in write_nodes():
        print(f"wrote {changed}")
