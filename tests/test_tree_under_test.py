"""Console scripts started by the tests run the code of the tree the tests live in.

Under an editable install the venv's console scripts import whichever checkout the venv was
installed from; a second worktree sharing that venv would otherwise test the first tree's code.
"""

from __future__ import annotations

import os
import re
import subprocess

from conftest import REPO, console_script


def test_console_script_imports_this_trees_code():
    env = {**os.environ, "PYTHONVERBOSE": "1"}
    res = subprocess.run(
        [console_script("sam-prep"), "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # `python -v` names the file each module was read from (source or its __pycache__ entry).
    loaded = re.findall(
        r"code object from '?(\S*/sam_train/cli/(?:__pycache__/)?prep\.[^'\s]*)", res.stderr
    )
    assert loaded, "sam_train.cli.prep was not imported from a source file"
    assert all(os.path.realpath(p).startswith(str(REPO) + os.sep) for p in loaded), (loaded, REPO)
