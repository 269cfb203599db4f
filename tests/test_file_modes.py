"""Exports, their JSON and pictures get the mode the umask gives any new file (0644 under the
usual 022), not mkstemp's private 0600, so that colleagues can read them."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from conftest import tiny_sam

from sam_train.files import write_text_atomic
from sam_train.viz.mae_grid import save_png
from sam_train.weights.export import export
from sam_train.weights.safetensors_io import save_weights


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_umask_mode(tmp_path, umask):
    expected = 0o666 & ~umask
    sam = tiny_sam()
    weights = save_weights(
        tmp_path / "sam.safetensors", sam.state_dict(), {"architecture": sam.architecture}
    )
    official = export(weights, "sam", tmp_path / "out" / "sam.pth")
    encoder = export(weights, "encoder", tmp_path / "out" / "encoder.safetensors")
    save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "out" / "picture.png")
    write_text_atomic(tmp_path / "out" / "notes.txt", "x")
    # what open() gives a new file under the same umask: the reference for "like any file"
    with open(tmp_path / "plain.txt", "w"):
        pass
    assert mode(tmp_path / "plain.txt") == expected
    for path in [
        weights,
        official,
        official.with_suffix(".json"),
        encoder,
        tmp_path / "out" / "picture.png",
        tmp_path / "out" / "notes.txt",
    ]:
        assert mode(path) == expected, f"{path.name}: {oct(mode(path))} != {oct(expected)}"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_exported_folders_get_the_umask_mode(tmp_path, umask):
    """A Hugging Face folder: its model.safetensors (written by safetensors' save_file, which
    creates private files) and config files follow the umask like every other export."""
    pytest.importorskip("transformers")
    sam = tiny_sam()
    weights = save_weights(
        tmp_path / "sam.safetensors", sam.state_dict(), {"architecture": sam.architecture}
    )
    folder = export(weights, "hf", tmp_path / "hf")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    for path in files:
        assert mode(path) == 0o666 & ~umask, f"{path.name}: {oct(mode(path))}"
    assert mode(folder) == 0o777 & ~umask
