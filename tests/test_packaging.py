"""A non-editable install carries its configs and composes them from any directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_install_finds_configs_from_any_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "sam_train" / "conf" / "train.yaml").is_file()
    assert (target / "sam_train" / "conf" / "model" / "mae_vit_base.yaml").is_file()
    assert (target / "sam_train" / "app" / "static" / "index.html").is_file()  # the sam-app page
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import sam_train, sys; from hydra import compose, initialize_config_module\n"
        "assert sam_train.__file__.startswith(sys.argv[1]), sam_train.__file__\n"
        "with initialize_config_module('sam_train.conf', version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['model=mae_vit_base'])\n"
        "print(cfg.model.embed_dim, cfg.stage.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["768", "mae"]
