"""`sam-prep ... --val-fraction F` / `--val-images LIST`: a validation split by image into
OUT/train and OUT/val, the same on every rerun and machine, mistakes refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import call_main
from formats_helpers import save_label, stored
from prep_helpers import image_folder, write_image

from data_prep.common import PrepError
from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions
from sam_train.cli import prep as prep_cli


def _opts(**kw) -> ShardOptions:
    return ShardOptions(maxcount=3, progress=False, **kw)


def test_split_by_image_is_deterministic_and_disjoint(tmp_path):
    src = image_folder(tmp_path / "src", 10)
    m = convert_images(src, tmp_path / "a", _opts(val_fraction=0.2))
    train, val = stored(tmp_path / "a" / "train"), stored(tmp_path / "a" / "val")
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert m["splits"]["val"]["total"] == 2 and m["splits"]["train"]["args"]["split"] == "train"
    convert_images(src, tmp_path / "b", _opts(val_fraction=0.2, workers=2))
    assert sorted(stored(tmp_path / "b" / "val")) == sorted(val)  # another run, same split
    write_image(src / "d0" / "new.png", 24, 16, seed=40)  # one more image moves few others
    convert_images(src, tmp_path / "a", _opts(val_fraction=0.2))
    assert len(set(stored(tmp_path / "a" / "val")) & set(val)) >= 1
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_named_validation_images(tmp_path):
    src = image_folder(tmp_path / "src", 6)
    convert_images(src, tmp_path / "o", _opts(val_keys=("d0_img_000", "d1_img_003")))
    assert sorted(stored(tmp_path / "o" / "val")) == ["d0_img_000", "d1_img_003"]
    with pytest.raises(PrepError, match="match no input"):
        convert_images(src, tmp_path / "p", _opts(val_keys=("nope",)))
    with pytest.raises(PrepError, match="no training"):
        convert_images(src, tmp_path / "q", _opts(val_fraction=0.99))


def test_tiles_of_one_image_stay_in_one_split(tmp_path):
    from data_prep.records import PixelOptions

    src = tmp_path / "src"
    for i in range(4):
        write_image(src / f"big{i}.png", 64, 32, seed=i)
    pixels = PixelOptions(tile=32)
    convert_images(src, tmp_path / "o", _opts(val_fraction=0.25), pixels)
    val = stored(tmp_path / "o" / "val")
    assert len(val) == 2 and len({k.rsplit("_", 2)[0] for k in val}) == 1


def test_masks_cli_writes_train_and_val_and_refuses_mistakes(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # --val-images names a file relative to where sam-prep runs
    imgs, labels = tmp_path / "imgs", tmp_path / "labels"
    for i in range(5):
        write_image(imgs / f"p{i}.jpg", 40, 32, seed=i)
        label = np.zeros((32, 40), np.uint8)
        label[2 + i : 12 + i, 3:20] = 1
        save_label(labels / f"p{i}.png", label)
    (tmp_path / "val.txt").write_text("p1.jpg\np3\n")
    base = ["masks", "--images", str(imgs), "--masks", str(labels), "--no-progress"]
    res = call_main(prep_cli.main, [*base, str(tmp_path / "out"), "--val-images", "val.txt"], capfd)
    assert res.returncode == 0, res.stderr
    assert "train: wrote 3 samples" in res.stdout and "val: wrote 2 samples" in res.stdout
    assert str(tmp_path / "out" / "val" / "manifest.json") in res.stdout
    assert sorted(stored(tmp_path / "out" / "val")) == ["p1", "p3"]
    manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert manifest["args"]["split"] == "train" and manifest["total"] == 3
    for args, fragment in [
        (["--val-fraction", "1.5"], "--val-fraction 1.5"),
        (["--val-images", "p9"], "match no input"),
    ]:
        res = call_main(prep_cli.main, [*base, str(tmp_path / "bad"), *args], capfd)
        assert res.returncode == 2 and fragment in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert not (tmp_path / "bad").exists()
    # a folder of unsplit shards is not split on top of
    assert call_main(prep_cli.main, [*base, str(tmp_path / "flat")], capfd).returncode == 0
    res = call_main(prep_cli.main, [*base, str(tmp_path / "flat"), "--val-fraction", "0.2"], capfd)
    assert res.returncode == 2 and "--overwrite" in res.stderr
