"""A conversion killed half way and rerun leaves exactly the shards of one uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tree_pythonpath
from prep_helpers import image_folder

import data_prep.images as images_mod
from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions, plan_groups

REPO = Path(__file__).resolve().parents[1]


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    src = image_folder(root / "src", 12)
    convert_images(src, root / "once", ShardOptions(maxcount=2, progress=False))
    return src, _shard_bytes(root / "once")


def test_plan_is_deterministic():
    assert plan_groups([1] * 5, 2, None) == [range(0, 2), range(2, 4), range(4, 5)]
    assert plan_groups([5, 5, 5, 1], 10, 10) == [range(0, 2), range(2, 4)]
    assert plan_groups([50, 1], 10, 10) == [range(0, 1), range(1, 2)]  # oversize sample alone
    # inputs making several samples (tiles): maxcount limits the samples, an input stays whole
    assert plan_groups([1] * 4, 5, None, [2, 2, 9, 1]) == [range(0, 2), range(2, 3), range(3, 4)]


def test_interrupted_then_rerun_equals_one_run(reference, tmp_path, monkeypatch):
    src, expected = reference
    out = tmp_path / "out"
    calls = []
    real = images_mod.encode_image_sample

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # inside the fourth shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(images_mod, "encode_image_sample", dying)
    with pytest.raises(KeyboardInterrupt):
        convert_images(src, out, ShardOptions(maxcount=2, progress=False))
    assert sorted(_shard_bytes(out)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not (out / "manifest.json").exists()
    # what a kill in the middle of writing leaves behind: half a tar under a temporary name
    (out / "shard-000003.tar.tmp-999999").write_bytes(b"half a tar")
    (out / ".parts" / "shard-000003.tar.json.tmp-999999").write_text("{")

    calls.clear()
    monkeypatch.setattr(
        images_mod, "encode_image_sample", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    manifest = convert_images(src, out, ShardOptions(maxcount=2, progress=False))
    assert len(calls) == 6  # the three finished shards were not redone
    assert manifest["total"] == 12
    assert _shard_bytes(out) == expected
    assert not list(out.glob("*.tmp-*")) and not list((out / ".parts").glob("*.tmp-*"))

    calls.clear()
    convert_images(src, out, ShardOptions(maxcount=2, progress=False))  # idempotent: nothing to do
    assert calls == [] and _shard_bytes(out) == expected


def test_changed_options_rewrite_instead_of_mixing(reference, tmp_path):
    src, expected = reference
    out = tmp_path / "out"
    convert_images(src, out, ShardOptions(maxcount=5, progress=False))
    convert_images(src, out, ShardOptions(maxcount=2, progress=False))
    assert _shard_bytes(out) == expected
    convert_images(src, out, ShardOptions(maxcount=5, progress=False))
    assert len(_shard_bytes(out)) == 3  # shards of the longer plan are gone


def test_sigkill_during_parallel_run_then_rerun(reference, tmp_path):
    src, expected = reference
    out = tmp_path / "out"
    (tmp_path / "slowprep.py").write_text(
        "import time\nfrom data_prep.images import encode_image_sample\n"
        "def slow(*a, **k):\n    time.sleep(0.1)\n    return encode_image_sample(*a, **k)\n"
    )
    code = (
        "import data_prep.images as m, slowprep\n"
        "from data_prep.shard_writer import ShardOptions\n"
        "m.encode_image_sample = slowprep.slow\n"
        f"m.convert_images({str(src)!r}, {str(out)!r}, ShardOptions(maxcount=2, workers=2, progress=False))\n"
    )
    env = {**os.environ, "PYTHONPATH": tree_pythonpath(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("shard-*.tar")) and proc.poll() is None:
        time.sleep(0.05)
    killed_early = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_early, "the conversion ended before it could be killed"
    assert 0 < len(list(out.glob("shard-*.tar"))) < len(expected)
    assert not (out / "manifest.json").exists()
    manifest = convert_images(src, out, ShardOptions(maxcount=2, workers=2, progress=False))
    assert manifest["total"] == 12
    assert _shard_bytes(out) == expected
