"""Code defaults as Hydra config nodes, so each default lives in one place.

A config file names the class or function it builds in its defaults list,

    defaults:
      - /code_defaults/sam_train.data.shard_datamodules.ShardSamDataModule@_here_
      - _self_

and holds only what differs. The node `code_defaults/<target>` is made here from the
target's signature: `_target_` plus every argument that has a default (dataclass fields,
constructor or function keywords; a class whose `__init__` takes `**kwargs` adds its base
class's arguments). So `data.batch_size=8` overrides a key the YAML never wrote, and a
default changed in the code is the default of every run.

`register_code_defaults()` must run before Hydra composes: `sam_train.conf`'s `__init__`
(imported by `initialize_config_module("sam_train.conf")`) and `sam-train` call it.

Reading a signature imports its module (torch, Lightning: seconds), so the nodes are cached
under `~/.cache/sam_train/code_defaults/`, keyed by the size and time of every source file of
the package and the versions of the other packages named (Lightning's Trainer): `sam-train --help` and a config error answer without importing them, and any
edit of the code makes a new key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object

GROUP = "code_defaults"
# arguments `sam-train` passes itself (to the stage module, to the Trainer), never from the config
PASSED_AT_RUN_TIME = frozenset({"model", "optim", "run_config", "callbacks", "logger"})
_ENTRY = re.compile(rf"^\s*-\s*/{GROUP}/([\w.]+)@", re.MULTILINE)
_registered: set[str] = set()


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


def _cache_file(targets: list[str]) -> Path:
    """Where the nodes of `targets` are cached for the package's source files as they are now."""
    digest = hashlib.sha256("\n".join(targets).encode())
    for package in sorted({t.split(".")[0] for t in targets} - {"sam_train"}):  # lightning, ...
        try:
            digest.update(f"{package}=={metadata.version(package)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}\n".encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return root / "sam_train" / GROUP / f"{digest.hexdigest()[:24]}.json"


def _cached_defaults(targets: list[str]) -> dict[str, dict[str, Any]]:
    """`defaults_of` for every target, from the cache when the code has not changed since."""
    cache = _cache_file(targets)
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    nodes = {t: defaults_of(t) for t in targets}
    try:
        from sam_train.files import write_text_atomic

        write_text_atomic(cache, json.dumps(nodes))
    except (OSError, TypeError, ValueError):  # a read-only home, or a default JSON cannot hold
        pass
    return nodes


def register_code_defaults(conf_dir: str | Path | None = None) -> list[str]:
    """Store a `code_defaults/<target>` node for every such entry in the config files."""
    conf_dir = Path(conf_dir) if conf_dir else Path(__file__).parent / "conf"
    targets = sorted({t for f in conf_dir.rglob("*.yaml") for t in _ENTRY.findall(f.read_text())})
    missing = [t for t in targets if t not in _registered]
    if not missing:
        return targets
    store = ConfigStore.instance()
    for target, node in _cached_defaults(missing).items():
        store.store(group=GROUP, name=target, node=node)
        _registered.add(target)
    return targets
