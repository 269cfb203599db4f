"""The error contract every tool shares (`sam_train.errors.run_tool`): a user's mistake is one
line `prog: error: ...` and exit 2, found even when wrapped by Hydra or Lightning; a bug keeps
its traceback; SAM_TRAIN_TRACEBACK=1 shows the traceback of a mistake too. And the override
check that finds an unknown key by looking it up, never by reading Hydra's message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sam_train
from sam_train.cli.overrides import check_overrides, explain_refusal, parse_overrides
from sam_train.config_checks import ConfigError
from sam_train.errors import UsageError, UserError, run_tool


def fails(message: str, kind: type[Exception] = UsageError):
    def work() -> None:
        raise kind(message)

    return work


def exit_of(capsys, work, **kwargs) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_:
        run_tool("tool", work, **kwargs)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_user_error_is_one_line_and_exit_2(capsys):
    code, lines = exit_of(capsys, fails("--out x is a folder; give a file"))
    assert code == 2 and lines == ["tool: error: --out x is a folder; give a file"]


def test_a_message_of_several_lines_is_printed_as_one(capsys):
    code, lines = exit_of(capsys, fails("two problems:\n- a is wrong\n- b is wrong"))
    assert code == 2 and lines == ["tool: error: two problems:; a is wrong; b is wrong"]


def test_a_user_error_wrapped_by_a_library_is_still_found(capsys):
    def work() -> None:
        try:
            raise UserError("data.path=/x does not exist")
        except UserError as err:
            raise RuntimeError("Error in call to target 'ShardDataModule'") from err

    code, lines = exit_of(capsys, work)
    assert code == 2 and lines == ["tool: error: data.path=/x does not exist"]


def test_os_errors_are_the_users_only_where_the_tool_says_so(capsys, tmp_path):
    def write() -> None:
        (tmp_path / "file").write_text("x")
        open(tmp_path / "file" / "below", "w")  # a file where a folder should be

    with pytest.raises(NotADirectoryError):
        run_tool("tool", write)
    code, lines = exit_of(capsys, write, expected=(OSError,))
    assert code == 2 and lines == [f"tool: error: {tmp_path / 'file' / 'below'}: Not a directory"]


def test_a_missing_file_is_always_the_users(capsys, tmp_path):
    code, lines = exit_of(capsys, lambda: open(tmp_path / "none.txt"))
    assert code == 2 and lines == [
        f"tool: error: {tmp_path / 'none.txt'}: No such file or directory"
    ]


def test_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(KeyError):
        run_tool("tool", fails("x", KeyError))
    assert capsys.readouterr().err == ""


def test_the_traceback_variable_shows_a_users_mistake_as_raised(capsys, monkeypatch):
    monkeypatch.setenv("SAM_TRAIN_TRACEBACK", "1")
    with pytest.raises(UsageError, match="bad value"):
        run_tool("tool", fails("bad value"))


def test_cleanup_runs_first_and_its_line_follows_the_error(capsys):
    calls = []

    def cleanup() -> str:
        calls.append(1)
        return "(run folder: /runs/1)"

    code, lines = exit_of(capsys, fails("broken"), cleanup=cleanup)
    assert calls == [1]
    assert lines == ["tool: error: broken", "tool: (run folder: /runs/1)"]


def test_no_tool_prints_its_own_error_line():
    """Every `prog: error:` line comes from sam_train/errors.py (run_tool, exit_with_error)."""
    root = Path(sam_train.__file__).parent
    printing = re.compile(r"print\(\s*f?[\"'][^\"']*: error:")
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "errors.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if printing.search(line)
    ]
    assert found == []


# ----------------------------------------------------------------------------- overrides
def test_an_unknown_key_is_found_by_lookup_whatever_hydra_said():
    overrides = parse_overrides(["stage=sam", "model.mask_ration=0.5"])
    from sam_train.cli.help import config_groups

    advice = explain_refusal(overrides, config_groups(), "train", RuntimeError("any text"))
    assert advice.startswith("model.mask_ration is not a config key (model has: ")
    overrides = parse_overrides(["stage=mae", "model.mask_ration=0.5"])
    advice = explain_refusal(overrides, config_groups(), "train", RuntimeError("any text"))
    assert advice == "model.mask_ration is not a config key; did you mean model.mask_ratio?"


def test_a_refusal_that_is_not_an_unknown_key_shows_hydras_own_words():
    overrides = parse_overrides(["seed=1"])
    from sam_train.cli.help import config_groups

    assert explain_refusal(overrides, config_groups(), "train", RuntimeError("a\nb.")) == "a; b"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["model=mae_vit_bse"], ["no model/mae_vit_bse.yaml", "did you mean model=mae_vit_base?"]),
        (["model.x=["], ["model.x=[:"]),
        (["seed=1,2"], ["seed=1,2", "--multirun", "key=[a,b]"]),
        (["~trainer.max_step"], ["did you mean trainer.max_steps?"]),
    ],
)
def test_bad_overrides_are_one_config_error(args, fragments):
    with pytest.raises(ConfigError) as err:
        check_overrides(args)
    assert "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_good_overrides_give_the_composed_config():
    cfg = check_overrides(["stage=sam", "model=sam_vit_tiny", "optim.lr=0.001", "+extra=1"])
    assert cfg.optim.lr == 0.001 and cfg.extra == 1 and cfg.stage.name == "sam"


def test_sam_train_shows_the_traceback_of_a_mistake_when_asked(monkeypatch, tmp_path):
    from sam_train.cli import train

    monkeypatch.setenv("SAM_TRAIN_TRACEBACK", "1")
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    with pytest.raises(ConfigError, match="did you mean model.mask_ratio"):
        train.main(["model.mask_ration=0.5"])
    assert not (tmp_path / "outputs").exists()
