"""The joints between the packages: no import cycles, and no private names imported from
another module. data_prep builds on sam_train's library; of sam_train, only the console
commands (sam_train/cli) use data_prep, and nothing imports the commands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sam_train", "data_prep")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "conf" in path.relative_to(REPO).parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from module import name` and (module, '') of `import module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


MODULES = modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(name):
    private = [
        f"{module}.{imported}"
        for module, imported in imports_of(MODULES[name])
        if module.split(".")[0] in PACKAGES and imported.startswith("_") and module != name
    ]
    assert private == [], f"{name} imports private names; make them public in one home"


def test_data_prep_is_used_only_by_the_commands_and_never_uses_them():
    for name, path in MODULES.items():
        targets = {module for module, _ in imports_of(path)}
        if name.startswith("sam_train.") and not name.startswith("sam_train.cli"):
            assert not any(t.startswith("data_prep") for t in targets), name
        assert not any(
            t.startswith("sam_train.cli") for t in targets if not name.startswith("sam_train.cli")
        ), name


def test_no_import_cycle_between_modules():
    graph = {
        name: {
            m
            for module, imported in imports_of(path)
            for m in (module, f"{module}.{imported}")
            if m in MODULES and m != name
        }
        for name, path in MODULES.items()
    }
    # a package's __init__ re-exporting its modules is not a cycle of its own
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
