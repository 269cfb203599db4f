"""`make test` starts the longest test files first: xdist hands whole files to its workers in
collection order, so a long file left to the end runs on one worker while the other idles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import conftest


def items(*names: str) -> list:
    return [SimpleNamespace(path=Path("tests") / n.split("::")[0], nodeid=n) for n in names]


def test_files_run_longest_first_keeping_their_own_order(tmp_path, monkeypatch) -> None:
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"a.py": 5.0, "b.py": 90.0, "c.py": 20.0}))
    monkeypatch.setattr(conftest, "DURATIONS", durations)
    collected = items("a.py::1", "a.py::2", "new.py::1", "b.py::1", "b.py::2", "c.py::1")
    conftest.heaviest_files_first(collected)
    # new.py was never recorded: it counts as the median file (20 s), tied with c.py, and ties
    # keep their collection order
    assert [i.nodeid for i in collected] == [
        "b.py::1", "b.py::2", "new.py::1", "c.py::1", "a.py::1", "a.py::2",
    ]  # fmt: skip


def test_without_recorded_durations_the_collection_order_stays(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(conftest, "DURATIONS", tmp_path / "missing.json")
    collected = items("z.py::1", "a.py::1", "m.py::1")
    conftest.heaviest_files_first(collected)
    assert [i.nodeid for i in collected] == ["z.py::1", "a.py::1", "m.py::1"]


def test_recording_updates_the_files_that_ran_and_keeps_the_others(tmp_path, monkeypatch):
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"a.py": 5.0, "b.py": 90.0}))
    monkeypatch.setattr(conftest, "DURATIONS", durations)
    conftest.record_durations({"a.py": 120.04, "new.py": 1.0})
    assert json.loads(durations.read_text()) == {"a.py": 120.0, "b.py": 90.0, "new.py": 1.0}
    assert list(json.loads(durations.read_text())) == ["a.py", "b.py", "new.py"]  # longest first


def test_the_recorded_durations_name_test_files_that_exist() -> None:
    recorded = json.loads(conftest.DURATIONS.read_text())
    tests = Path(conftest.__file__).parent
    assert len(recorded) > 50
    assert all((tests / name).exists() for name in recorded), "rerun make test-durations"


def test_make_test_keeps_this_order() -> None:
    # xdist's default reorders files by their number of tests, which would undo the above
    makefile = (conftest.REPO / "Makefile").read_text()
    xdist = re.search(r"^XDIST = (.*)$", makefile, re.M).group(1)
    assert "--dist loadfile" in xdist and "--no-loadscope-reorder" in xdist
    assert re.search(r"^test: .*\n\t\$\(BIN\)/python -m pytest -q \$\(XDIST\)$", makefile, re.M)
