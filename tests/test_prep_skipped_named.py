"""Every input a conversion leaves out is named with its reason: the first few in the report,
all of them in OUT/skipped.jsonl (none left behind once nothing is skipped)."""

from __future__ import annotations

import json

import numpy as np
from conftest import call_main
from formats_helpers import save_label
from prep_helpers import make_coco, write_image

from data_prep.coco import convert_coco
from data_prep.shard_writer import ShardOptions, report
from sam_train.cli import prep as prep_cli


def _skipped(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "skipped.jsonl").read_text().splitlines()]


def test_masks_report_and_file_name_each_skipped_input(tmp_path, capfd):
    imgs, labels, out = tmp_path / "imgs", tmp_path / "labels", tmp_path / "out"
    good = np.zeros((32, 40), np.uint8)
    good[3:12, 4:20] = 1
    write_image(imgs / "a.png", 40, 32, seed=1)
    save_label(labels / "a.png", good)
    write_image(imgs / "b.png", 40, 32, seed=2)
    save_label(labels / "b.png", np.ones((10, 10), np.uint8))  # another size
    (imgs / "c.png").write_bytes(b"\x89PNG not really")  # corrupt image
    save_label(labels / "c.png", good)
    write_image(imgs / "d.png", 40, 32, seed=4)  # no label at all
    args = ["masks", "--images", imgs, "--masks", labels, out, "--no-progress", "--workers", "1"]
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 0, res.stderr
    entries = {e["input"]: e for e in _skipped(out)}
    assert set(entries) == {str(imgs / n) for n in ("b.png", "c.png", "d.png")}
    assert entries[str(imgs / "d.png")]["reason"] == "image_without_masks"
    assert entries[str(imgs / "c.png")]["reason"] == "image_unreadable"
    for name in ("b.png", "c.png", "d.png"):
        assert f"{imgs / name}: " in res.stdout
    assert str(out / "skipped.jsonl") in res.stdout
    # fixed inputs: nothing skipped, no stale list
    (imgs / "b.png").unlink()
    (imgs / "c.png").unlink()
    (imgs / "d.png").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "skipped_inputs" not in manifest  # the manifest keeps counts, the file the names
    from data_prep.masks import convert_masks

    convert_masks(imgs, labels, out, ShardOptions(progress=False))
    assert not (out / "skipped.jsonl").exists()


def test_report_names_the_first_few_then_a_count(tmp_path):
    images, ann = make_coco(tmp_path)
    coco = json.loads(ann.read_text())
    coco["images"] += [
        {"id": 100 + i, "file_name": f"gone{i}.jpg", "width": 8, "height": 8} for i in range(7)
    ]
    ann.write_text(json.dumps(coco))
    manifest = convert_coco(images, ann, tmp_path / "out", ShardOptions(progress=False))
    text = report(manifest)
    listed = [line for line in text.splitlines() if line.startswith("    /")]
    assert len(listed) == 5
    assert "more; every skipped input: " in text
    reasons = [e["reason"] for e in _skipped(tmp_path / "out")]
    assert reasons.count("image_missing") == 8 and "image_unreadable" in reasons
