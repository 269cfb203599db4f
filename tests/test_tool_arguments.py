"""One argument style for the tools that take flags (sam-export, sam-predict, sam-app,
sam-prep): the checkpoint is the first positional argument and is explained alike, outputs
are `--out`, an image file is `--image`, a folder of images `--images DIR`; sam-train and
sam-eval say in --help that they take Hydra overrides instead."""

from __future__ import annotations

import argparse

import pytest

from sam_train.cli import app, export, predict, prep
from sam_train.cli.arguments import CHECKPOINT_HELP, OneLineParser


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


@pytest.mark.parametrize("tool", [export, predict, app])
def test_a_checkpoint_tool_takes_the_checkpoint_first_and_explains_it_alike(tool):
    parser = tool.build_parser()
    assert isinstance(parser, OneLineParser)
    (first,) = positionals(parser)
    assert first.dest == "checkpoint" and first.metavar == "CHECKPOINT"
    assert first.help.startswith(CHECKPOINT_HELP)


def test_shared_options_are_spelled_and_typed_alike():
    export_opts, predict_opts, app_opts = (
        options(t.build_parser()) for t in (export, predict, app)
    )
    assert export_opts["--out"].metavar == predict_opts["--out"].metavar == "PATH"
    assert predict_opts["--device"].default == app_opts["--device"].default == "cpu"
    assert predict_opts["--image"].metavar == "FILE" and app_opts["--images"].metavar == "DIR"
    subcommands = next(a for a in prep.build_parser()._actions if a.choices and a.dest == "command")
    for name in ("coco", "masks"):
        assert options(subcommands.choices[name])["--images"].metavar == "DIR", name
    for name, sub in subcommands.choices.items():
        assert isinstance(sub, OneLineParser), name
        assert all(a.metavar and a.metavar.isupper() for a in positionals(sub)), name


def test_hydra_style_tools_say_so_in_their_help(capsys, monkeypatch):
    import sys

    from sam_train.cli import eval as eval_cli
    from sam_train.cli import train

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for main, prog in ((train.main, "sam-train"), (eval_cli.main, "sam-eval")):
        main(["--help"])
        text = capsys.readouterr().out
        assert text.startswith(f"usage: {prog} "), text[:200]
        assert "Options are Hydra overrides, not --flags" in text
