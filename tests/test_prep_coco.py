"""COCO -> shards -> reader: every mask equals pycocotools' annToMask; bad inputs are counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prep_helpers import identity_prep, make_coco
from pycocotools.coco import COCO

from data_prep.coco import convert_coco
from data_prep.common import PrepError
from data_prep.records import PixelOptions
from data_prep.rle import resize_masks
from data_prep.shard_writer import ShardOptions
from sam_train.data.sam_samples import masks_to_boxes
from sam_train.data.shards import ShardStream, resolve_shards


def _read_items(path, prep) -> list:
    urls, total = resolve_shards(path)
    stream = ShardStream(
        urls, prep, list, batch_size=1000, total=total, shuffle_buffer=0, shuffle_shards=False
    )
    return [item for batch in stream for item in batch]


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images, ann = make_coco(root)
    manifest = convert_coco(images, ann, root / "shards", ShardOptions(maxcount=1, progress=False))
    return root, ann, manifest


def test_manifest_counts_every_skip_reason(coco_shards):
    _, _, manifest = coco_shards
    assert manifest["total"] == 2 and len(manifest["shards"]) == 2
    assert manifest["skipped"] == {
        "image_missing": 1,
        "image_unreadable": 1,
        "no_valid_annotations": 1,
        "polygon_too_few_points": 1,
        "annotation_outside_image": 1,
    }
    on_disk = json.loads((coco_shards[0] / "shards" / "manifest.json").read_text())
    assert on_disk["total"] == 2 and on_disk["source"].endswith("images")


def test_masks_equal_ann_to_mask(coco_shards):
    root, ann_path, _ = coco_shards
    coco = COCO(str(ann_path))
    items = _read_items(root / "shards", identity_prep(48))
    assert sorted(it.image_id for it in items) == [1, 2]
    for it in items:
        h, w = it.image_hw
        anns = [a for a in coco.imgToAnns[it.image_id] if a["id"] not in (13, 14)]
        assert len(it.masks) == len(anns)
        got = it.masks.numpy()
        assert got.shape[1:] == (h, w)
        for a in anns:
            expected = coco.annToMask(a).astype(bool)
            match = [i for i in range(len(got)) if np.array_equal(got[i], expected)]
            assert len(match) == 1, f"annotation {a['id']} not found exactly once"
            i = match[0]
            assert it.categories[i] == {1: "cat", 2: "dog"}.get(a["category_id"])
            assert int(it.category_ids[i]) == a["category_id"]
            assert it.boxes[i].tolist() == masks_to_boxes(expected[None])[0].tolist()


def test_stored_json_keeps_boxes_and_names(coco_shards):
    root, _, _ = coco_shards
    import tarfile

    with tarfile.open(root / "shards" / "shard-000000.tar") as tar:
        rec = json.loads(tar.extractfile("a.json").read())
    assert rec["image"] == {"width": 48, "height": 40, "id": 1, "file_name": "a.jpg"}
    by_id = {a["id"]: a for a in rec["annotations"]}
    assert sorted(by_id) == [10, 11, 12]
    assert by_id[10]["bbox"] == [4.5, 3.5, 20, 15] and by_id[10]["category"] == "cat"
    assert by_id[12]["iscrowd"] == 1 and isinstance(by_id[12]["segmentation"]["counts"], str)


def test_resized_masks_follow_the_image(tmp_path):
    images, ann = make_coco(tmp_path)
    convert_coco(
        images, ann, tmp_path / "small", ShardOptions(progress=False), PixelOptions(max_side=24)
    )
    coco = COCO(str(ann))
    items = _read_items(tmp_path / "small", identity_prep(24))
    for it in items:
        h, w = it.image_hw
        img = coco.imgs[it.image_id]
        assert max(h, w) == 24
        for a in coco.imgToAnns[it.image_id]:
            if a["id"] in (13, 14):
                continue
            expected = resize_masks(coco.annToMask(a).astype(bool)[None], h, w)[0]
            assert any(np.array_equal(m[:h, :w].numpy(), expected) for m in it.masks), (
                img,
                a["id"],
            )


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(PrepError, match="instances_train.json.*--annotations"):
        convert_coco(tmp_path / "images", tmp_path / "instances_train.json", tmp_path / "out")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    from sam_train.cli.prep import main

    def exit_code(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        return exit_.value.code

    (tmp_path / "images").mkdir()
    images, annotations = str(tmp_path / "images"), str(tmp_path / "nope.json")
    rc = exit_code(["coco", "--images", images, "--annotations", annotations, str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.json" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert exit_code(["images", str(tmp_path / "empty"), str(tmp_path / "out2")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_cli_converts(tmp_path, capsys):
    from sam_train.cli.prep import main

    images, ann = make_coco(tmp_path)
    rc = main(
        [
            "coco",
            "--images",
            str(images),
            "--annotations",
            str(ann),
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--no-progress",
            "--maxsize",
            "1M",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 2 samples" in out and "image_missing" in out
