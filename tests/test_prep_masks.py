"""`sam-prep masks`: label images, per-object mask files and semantic label images read back
from the shards pixel for pixel; bad inputs counted by reason; reruns byte-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import call_main, run_cli
from formats_helpers import masks_by_id, save_label, shard_bytes, stored
from prep_helpers import write_image
from scipy import ndimage

import data_prep.masks as masks_mod
from data_prep.masks import convert_masks, load_classes
from data_prep.shard_writer import ShardOptions
from sam_train.cli import prep as prep_cli

OPTS = ShardOptions(maxcount=2, progress=False)


def _blobs(h: int, w: int, values: list[int], dtype, seed: int) -> np.ndarray:
    """A label image with one rectangle per value; the last value gets a second, separate
    rectangle (an object need not be connected)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=dtype)
    for v in values:
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        label[y : y + int(rng.integers(3, 9)), x : x + int(rng.integers(3, 9))] = v
    label[0:2, 0:3] = values[-1]
    return label


@pytest.fixture(scope="module")
def instance_data(tmp_path_factory):
    """Images with every accepted mask layout, and one of each bad input."""
    root = tmp_path_factory.mktemp("masks")
    imgs, labels = root / "imgs", root / "labels"
    truth = {}
    for name, ext, values, dtype in [
        ("a", ".png", [1, 2, 5], np.uint8),
        ("sub/b", ".tif", [1000, 40000], np.uint16),
        ("c", ".tif", [70000, 2**30, -3], np.int32),  # huge and negative ids
    ]:
        write_image(imgs / f"{name}.jpg", 40, 32, seed=len(truth))
        label = _blobs(32, 40, values, dtype, seed=len(truth))
        save_label(labels / f"{name}{ext}", label)
        truth[name.replace("/", "_")] = {v: label == v for v in values}
    objs = {}
    for k in (1, 7):
        m = np.zeros((32, 40), dtype=np.uint8)
        m[3 * k : 3 * k + 5, 2 * k : 2 * k + 9] = 255
        save_label(labels / "d" / f"{k}.png", m)  # <stem>/<k>.png
        save_label(labels / f"e_{k}.png", m // 255)  # <stem>_<k>.png
        objs[k] = m > 0
    write_image(imgs / "d.png", 40, 32, seed=5)
    write_image(imgs / "e.png", 40, 32, seed=6)
    truth["d"], truth["e"] = objs, objs
    # bad inputs
    write_image(imgs / "f.png", 40, 32, seed=7)
    save_label(labels / "f.png", np.ones((20, 20), np.uint8))  # another size
    write_image(imgs / "g.png", 40, 32, seed=8)  # no masks at all
    write_image(imgs / "h.png", 40, 32, seed=9)
    (labels / "h.tif").write_bytes(b"II*\x00 not really a tiff")  # corrupt label TIFF
    (imgs / "i.tif").write_bytes(b"MM\x00* corrupt image TIFF")
    save_label(labels / "i.png", np.ones((32, 40), np.uint8))
    write_image(imgs / "j.png", 40, 32, seed=10)
    save_label(labels / "j.png", np.zeros((32, 40), np.uint8))  # label image without objects
    return root, truth


def test_label_images_and_mask_files_read_back_pixel_for_pixel(instance_data, tmp_path):
    root, truth = instance_data
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS)
    got = stored(tmp_path / "out")
    assert sorted(got) == sorted(truth)
    for key, (record, rgb) in got.items():
        masks = masks_by_id(record)
        assert sorted(masks) == sorted(truth[key]), key
        for obj_id, expected in truth[key].items():
            assert np.array_equal(masks[obj_id], expected), (key, obj_id)
        assert rgb.shape == (32, 40, 3)
        assert all(a["category"] is None for a in record["annotations"])
    assert manifest["skipped"] == {
        "image_without_masks": 2,  # g (no file), j (all background)
        "mask_size_mismatch": 1,
        "mask_unreadable": 1,
        "image_unreadable": 1,
    }


def test_reruns_are_byte_identical_and_resume_without_duplicates(
    instance_data, tmp_path, monkeypatch
):
    root, truth = instance_data
    convert_masks(root / "imgs", root / "labels", tmp_path / "once", OPTS)
    expected = shard_bytes(tmp_path / "once")
    two = ShardOptions(maxcount=2, workers=2, progress=False)
    convert_masks(root / "imgs", root / "labels", tmp_path / "two", two)
    assert shard_bytes(tmp_path / "two") == expected

    real, calls = masks_mod.encode_masks_sample, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # killed inside the second shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(masks_mod, "encode_masks_sample", dying)
    with pytest.raises(KeyboardInterrupt):
        convert_masks(root / "imgs", root / "labels", tmp_path / "killed", OPTS)
    monkeypatch.setattr(masks_mod, "encode_masks_sample", real)
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "killed", OPTS)
    assert shard_bytes(tmp_path / "killed") == expected
    assert manifest["total"] == len(truth) == len(stored(tmp_path / "killed"))


@pytest.fixture(scope="module")
def semantic_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    write_image(root / "imgs" / "s.png", 48, 40, seed=1)
    label = np.zeros((40, 48), dtype=np.uint8)
    label[2:10, 2:10] = 1
    label[20:30, 30:45] = 1  # a second "cell", not connected to the first
    label[10:11, 10:11] = 1  # touches the first one diagonally: the same object
    label[25:35, 5:15] = 2
    label[0:3, 40:48] = 9  # not in the class table
    save_label(root / "labels" / "s.png", label)
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "cell", "2": "debris"}))
    (root / "classes.txt").write_text("background\ncell\ndebris\n")
    return root, label


@pytest.mark.parametrize("table", ["classes.json", "classes.txt"])
def test_semantic_label_image_splits_into_components_with_class_names(
    semantic_data, tmp_path, table
):
    root, label = semantic_data
    manifest = convert_masks(
        root / "imgs", root / "labels", tmp_path / "out", OPTS, classes=root / table
    )
    assert manifest["skipped"] == {"class_not_in_table": 1}
    assert manifest["args"]["classes"] == {"1": "cell", "2": "debris"}
    ((record, _),) = stored(tmp_path / "out").values()
    anns, masks = record["annotations"], masks_by_id(record)
    comps, _ = ndimage.label(label == 1, structure=np.ones((3, 3)))
    expected = [comps == 1, comps == 2, label == 2]
    assert [a["category"] for a in anns] == ["cell", "cell", "debris"]
    assert [a["category_id"] for a in anns] == [1, 1, 2]
    for a, want in zip(anns, expected):
        assert np.array_equal(masks[a["id"]], want)


def test_one_object_per_class_when_asked(semantic_data, tmp_path):
    root, label = semantic_data
    convert_masks(
        root / "imgs",
        root / "labels",
        tmp_path / "out",
        OPTS,
        classes=root / "classes.json",
        instances="class",
    )
    ((record, _),) = stored(tmp_path / "out").values()
    masks = list(masks_by_id(record).values())
    assert [a["category"] for a in record["annotations"]] == ["cell", "debris"]
    assert np.array_equal(masks[0], label == 1) and np.array_equal(masks[1], label == 2)


def test_class_table_forms(tmp_path):
    (tmp_path / "pairs.txt").write_text("1 tumour cell\n3: stroma\n")
    (tmp_path / "list.json").write_text('["_background_", "a", "b"]')
    assert load_classes(tmp_path / "pairs.txt") == {1: "tumour cell", 3: "stroma"}
    assert load_classes(tmp_path / "list.json") == {1: "a", 2: "b"}


def test_cli_reports_skips_and_refuses_bad_arguments_in_one_line(instance_data, tmp_path, capfd):
    root, _ = instance_data
    args = ["masks", "--images", str(root / "imgs"), "--masks", str(root / "labels")]
    # the console script as a user runs it (sam-prep's one run in a process of its own)
    res = run_cli("sam-prep", *args, tmp_path / "o", "--no-progress", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "wrote 5 samples" in res.stdout and "mask_size_mismatch" in res.stdout
    assert "stage 2 needs masks" in res.stdout  # what happens to images without masks
    for bad, words in [
        (["--masks", str(tmp_path / "nowhere")], "mask folder"),
        (["--normalize", "percentile:99"], "--normalize"),
        (["--tile", "8"], "--tile"),
        (["--tile", "64", "--max-side", "32"], "not both"),
    ]:
        res = call_main(prep_cli.main, [*args, *bad, tmp_path / "p"], capfd)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_keep_empty_writes_images_without_masks_for_stage1_only(instance_data, tmp_path):
    import random

    from prep_helpers import identity_prep

    from data_prep.inspect_shards import iter_samples
    from sam_train.data.shards import SkipSample, decode_image  # decode_image: stage 1's read

    root, truth = instance_data
    manifest = convert_masks(
        root / "imgs", root / "labels", tmp_path / "out", OPTS, keep_empty=True
    )
    assert manifest["skipped"]["kept_without_masks"] == 2  # g (no mask file), j (all zero)
    assert "image_without_masks" not in manifest["skipped"]
    samples = dict(iter_samples(tmp_path / "out"))
    assert sorted(samples) == sorted([*truth, "g", "j"])
    for key in ("g", "j"):
        sample = {**samples[key], "__key__": key}
        assert json.loads(sample["json"])["annotations"] == []
        assert decode_image(sample).size == (40, 32)
        with pytest.raises(SkipSample, match="no_masks"):
            identity_prep(48)(sample, random.Random(0))


def test_switching_keep_empty_rewrites_instead_of_mixing(instance_data, tmp_path):
    root, truth = instance_data
    convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS, keep_empty=True)
    manifest = convert_masks(root / "imgs", root / "labels", tmp_path / "out", OPTS)
    assert manifest["total"] == len(stored(tmp_path / "out")) == len(truth)
