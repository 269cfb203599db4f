"""A shard folder is a pure function of its inputs: for every converter, a rerun after one
input changed holds the new data, a rerun after one input was removed no longer holds its
sample, only the shards whose inputs changed are rewritten, and a folder converted from other
inputs is refused in one line naming --overwrite."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import call_main, tiny_sam
from formats_helpers import masks_by_id, save_label, stored
from prep_helpers import image_folder, make_coco, make_sa1b, write_image

from data_prep.coco import convert_coco
from data_prep.common import PrepError
from data_prep.images import convert_images
from data_prep.labelme import convert_labelme
from data_prep.masks import convert_masks
from data_prep.sa1b import convert_sa1b
from data_prep.shard_writer import ShardOptions
from sam_train.cli import prep as prep_cli

OPTS = ShardOptions(maxcount=2, progress=False)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.tar"))}


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_images_changed_image_is_reconverted_alone_and_removed_image_is_gone(tmp_path):
    src, out = image_folder(tmp_path / "src", 4), tmp_path / "out"
    convert_images(src, out, OPTS)  # shard 0: d0_img_000, d0_img_002; shard 1: d1_...
    before = _mtimes(out)
    write_image(src / "d1" / "img_001.jpg", 24, 16, seed=50)
    convert_images(src, out, OPTS)
    got = stored(out)
    convert_images(src, tmp_path / "fresh", OPTS)
    fresh = stored(tmp_path / "fresh")
    assert np.array_equal(got["d1_img_001"][1], fresh["d1_img_001"][1])
    after = _mtimes(out)
    assert after["shard-000000.tar"] == before["shard-000000.tar"]  # its inputs did not change
    assert after["shard-000001.tar"] != before["shard-000001.tar"]

    (src / "d0" / "img_002.jpg").unlink()
    manifest = convert_images(src, out, OPTS)
    assert manifest["total"] == 3 and "d0_img_002" not in stored(out)


def test_masks_fixed_label_image_gives_the_new_mask_and_removed_image_is_gone(tmp_path):
    imgs, labels, out = tmp_path / "imgs", tmp_path / "labels", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_image(imgs / f"{name}.jpg", 40, 32, seed=ord(name))
        save_label(labels / f"{name}.png", _rect(32, 40, 2, 10, 3, 12).astype(np.uint8))
    convert_masks(imgs, labels, out, OPTS)
    assert len(stored(out)["b"][0]["annotations"]) == 1
    label = _rect(32, 40, 2, 10, 3, 12).astype(np.uint8)
    label[20:30, 20:35] = 2  # the object the user forgot
    save_label(labels / "b.png", label)
    convert_masks(imgs, labels, out, OPTS)
    masks = list(masks_by_id(stored(out)["b"][0]).values())
    assert len(masks) == 2 and any(np.array_equal(m, label == 2) for m in masks)

    (imgs / "c.jpg").unlink()
    manifest = convert_masks(imgs, labels, out, OPTS)
    assert manifest["total"] == 2 and sorted(stored(out)) == ["a", "b"]


def test_masks_per_object_files_changed_and_removed(tmp_path):
    imgs, labels, out = tmp_path / "imgs", tmp_path / "labels", tmp_path / "out"
    write_image(imgs / "d.png", 40, 32, seed=1)
    save_label(labels / "d" / "1.png", _rect(32, 40, 1, 9, 1, 9).astype(np.uint8) * 255)
    save_label(labels / "d" / "2.png", _rect(32, 40, 15, 25, 15, 30).astype(np.uint8) * 255)
    convert_masks(imgs, labels, out, OPTS)
    moved = _rect(32, 40, 20, 30, 2, 12)
    save_label(labels / "d" / "1.png", moved.astype(np.uint8) * 255)
    convert_masks(imgs, labels, out, OPTS)
    masks = list(masks_by_id(stored(out)["d"][0]).values())
    assert any(np.array_equal(m, moved) for m in masks)
    (labels / "d" / "2.png").unlink()
    convert_masks(imgs, labels, out, OPTS)
    assert len(stored(out)["d"][0]["annotations"]) == 1


def test_coco_edited_annotations_and_removed_image(tmp_path):
    images, ann = make_coco(tmp_path)
    out = tmp_path / "out"
    convert_coco(images, ann, out, OPTS)
    coco = json.loads(ann.read_text())
    seg = next(a for a in coco["annotations"] if a["id"] == 20)
    seg["segmentation"] = [[2, 2, 20, 2, 20, 20, 2, 20]]
    coco["categories"][1]["name"] = "wolf"
    ann.write_text(json.dumps(coco))
    convert_coco(images, ann, out, OPTS)
    record = stored(out)["sub_b"][0]
    box = next(a for a in record["annotations"] if a["id"] == 20)
    assert box["category"] == "wolf"
    assert np.array_equal(masks_by_id(record)[20], _rect(48, 40, 2, 20, 2, 20))

    (images / "e.jpg").unlink()
    manifest = convert_coco(images, ann, out, OPTS)
    assert "e" not in stored(out) and manifest["skipped"]["image_missing"] == 2


def test_sa1b_edited_json_and_removed_image(tmp_path):
    src, out = make_sa1b(tmp_path / "sa1b"), tmp_path / "out"
    convert_sa1b(src, out, OPTS)
    data = json.loads((src / "sa_2.json").read_text())
    data["annotations"] = data["annotations"][:1]
    (src / "sa_2.json").write_text(json.dumps(data))
    convert_sa1b(src, out, OPTS)
    assert len(stored(out)["sa_2"][0]["annotations"]) == 1
    (src / "sa_10.jpg").unlink()
    convert_sa1b(src, out, OPTS)
    assert sorted(stored(out)) == ["sa_1", "sa_2"]


def _labelme(points: list, image: str) -> str:
    shape = {"label": "box", "shape_type": "rectangle", "points": points, "flags": {}}
    return json.dumps({"shapes": [shape], "imagePath": image, "imageHeight": 32, "imageWidth": 40})


def test_labelme_edited_shape_changed_image_and_removed_file(tmp_path):
    src, out = tmp_path / "ann", tmp_path / "out"
    for name in ("a", "b"):
        write_image(src / f"{name}.png", 40, 32, seed=ord(name))
        (src / f"{name}.json").write_text(_labelme([[2, 2], [10, 10]], f"{name}.png"))
    convert_labelme(src, out, OPTS)
    (src / "a.json").write_text(_labelme([[5, 5], [30, 25]], "a.png"))
    write_image(src / "b.png", 40, 32, seed=99)  # the image itself replaced
    convert_labelme(src, out, OPTS)
    got = stored(out)
    box = got["a"][0]["annotations"][0]["bbox"]
    assert box[2] > 20 and box[3] > 15
    fresh = tmp_path / "fresh"
    convert_labelme(src, fresh, OPTS)
    assert np.array_equal(got["b"][1], stored(fresh)["b"][1])
    (src / "b.json").unlink()
    convert_labelme(src, out, OPTS)
    assert sorted(stored(out)) == ["a"]


def test_teacher_embed_follows_its_input_shards(tmp_path):
    from data_prep.teacher_embed import convert_teacher_embed
    from sam_train.weights.safetensors_io import save_weights

    images, ann = make_coco(tmp_path)
    shards, out = tmp_path / "shards", tmp_path / "teacher"
    convert_coco(images, ann, shards, ShardOptions(maxcount=1, progress=False))
    sam = tiny_sam()
    teacher = tmp_path / "teacher.safetensors"
    save_weights(teacher, sam.state_dict(), {"architecture": sam.architecture})
    opts = ShardOptions(maxcount=1, progress=False)

    def embeddings() -> dict[str, np.ndarray]:
        convert_teacher_embed(shards, out, teacher, 64, opts)
        from data_prep.inspect_shards import iter_samples

        return {k: np.load(io.BytesIO(f["teacher.npy"])) for k, f in iter_samples(out)}

    first = embeddings()
    assert sorted(first) == ["a", "sub_b"]  # e has no annotations
    write_image(images / "a.jpg", 48, 40, seed=77)
    convert_coco(images, ann, shards, ShardOptions(maxcount=1, progress=False))
    second = embeddings()
    assert not np.array_equal(first["a"], second["a"])
    assert np.array_equal(first["sub_b"], second["sub_b"])
    (images / "sub" / "b.png").unlink()
    convert_coco(images, ann, shards, ShardOptions(maxcount=1, progress=False))
    assert sorted(embeddings()) == ["a"]


def test_a_folder_of_other_inputs_is_refused_unless_overwrite(tmp_path, capfd):
    a, b = image_folder(tmp_path / "a", 2), image_folder(tmp_path / "b", 3)
    out = tmp_path / "out"
    convert_images(a, out, OPTS)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PrepError, match="--overwrite"):
        convert_images(b, out, OPTS)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    res = call_main(prep_cli.main, ["images", b, out, "--no-progress"], capfd)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "--overwrite" in res.stderr
    res = call_main(prep_cli.main, ["images", b, out, "--no-progress", "--overwrite"], capfd)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["total"] == 3
    assert len(stored(out)) == 3
