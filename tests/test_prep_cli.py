"""`sam-prep`'s subcommand registry: every converter module registers itself without importing
the entry point back, and `python -m` runs the same parser as the console script."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from sam_train.cli import prep

CLI = Path(prep.__file__).parent


def test_every_subcommand_is_listed_by_the_module_and_the_console_script():
    expected = ["images", "coco", "sa1b", "sample", "clip-embed"]
    choices = prep.build_parser()._subparsers._group_actions[0].choices
    assert list(choices)[: len(expected)] == expected
    out = subprocess.run(
        [sys.executable, "-m", "sam_train.cli.prep", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(name in out for name in choices)


def test_subcommand_modules_do_not_import_the_entry_point():
    for module in prep.SUBCOMMAND_MODULES:
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "sam_train.cli.prep" not in imported, module.__name__
        assert callable(module.add_parser)


def test_a_subcommand_module_imports_on_its_own():
    code = "import sam_train.cli.prep_clip, sam_train.cli.prep; sam_train.cli.prep.build_parser()"
    subprocess.run([sys.executable, "-c", code], check=True)
