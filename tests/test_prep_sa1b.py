"""SA-1B layout -> shards -> reader round trip, and the images converter."""

from __future__ import annotations

import json
import tarfile

import pytest
from prep_helpers import identity_prep, image_folder, make_sa1b
from pycocotools import mask as mask_utils

from data_prep.common import PrepError
from data_prep.images import convert_images
from data_prep.records import PixelOptions
from data_prep.sa1b import convert_sa1b
from data_prep.shard_writer import ShardOptions
from sam_train.data.shards import ShardStream, resolve_shards


def test_sa1b_round_trip(tmp_path):
    src = make_sa1b(tmp_path / "sa1b", n=4)
    manifest = convert_sa1b(src, tmp_path / "out", ShardOptions(maxcount=3, progress=False))
    assert manifest["total"] == 4 and manifest["skipped"] == {"annotation_missing": 1}
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        names = tar.getnames()
        rec = json.loads(tar.extractfile("sa_1.json").read())
    assert (
        names[:2] == ["sa_1.jpg", "sa_1.json"] and "sa_2.jpg" in names and "sa_10.jpg" in names
    )  # natural order
    assert rec["image"]["id"] == 1 and rec["image"]["width"] == 36
    a = rec["annotations"][0]
    assert a["category"] is None and a["category_id"] == -1 and a["predicted_iou"] == 0.9

    urls, total = resolve_shards(tmp_path / "out")
    stream = ShardStream(
        urls, identity_prep(36), list, batch_size=10, total=total, shuffle_buffer=0
    )
    items = [it for batch in stream for it in batch]
    assert sorted(it.image_id for it in items) == [1, 2, 10, 11]
    for it in items:
        raw = json.loads((src / f"sa_{it.image_id}.json").read_text())["annotations"]
        want = [
            mask_utils.decode(
                {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
            )
            for r in raw
        ]
        got = it.masks.numpy()
        assert sorted(m.tobytes() for m in got) == sorted(w.astype(bool).tobytes() for w in want)
        assert it.categories == [None, None, None]


def test_empty_or_missing_sa1b_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepError, match="no SA-1B image files"):
        convert_sa1b(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(PrepError, match="does not exist"):
        convert_sa1b(tmp_path / "nowhere", tmp_path / "out")


def test_images_converter_keeps_bytes_and_resizes(tmp_path):
    src = image_folder(tmp_path / "imgs", 5, size=(40, 20))
    (src / "broken.webp").write_bytes(b"RIFF not really")
    m = convert_images(src, tmp_path / "a", ShardOptions(maxcount=2, progress=False))
    assert m["total"] == 5 and m["skipped"] == {"image_unreadable": 1} and len(m["shards"]) == 3
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        first = tar.getmembers()[0]
        assert first.name == "d0_img_000.png" and first.mtime == 0 and first.uname == ""
        assert tar.extractfile(first).read() == (src / "d0" / "img_000.png").read_bytes()
    m = convert_images(src, tmp_path / "b", ShardOptions(progress=False), PixelOptions(max_side=10))
    urls, _ = resolve_shards(tmp_path / "b")
    import io

    from PIL import Image

    with tarfile.open(urls[0]) as tar:
        sizes = {Image.open(io.BytesIO(tar.extractfile(x).read())).size for x in tar.getmembers()}
    assert sizes == {(10, 5)}


def test_resolve_brace_and_pipe(tmp_path):
    src = image_folder(tmp_path / "imgs", 6)
    convert_images(src, tmp_path / "s", ShardOptions(maxcount=2, progress=False))
    urls, total = resolve_shards(str(tmp_path / "s" / "shard-{000000..000002}.tar"))
    assert len(urls) == 3 and total == 6
    urls, total = resolve_shards(f"pipe:cat {tmp_path}/s/shard-{{000000..000001}}.tar")
    assert urls[0].startswith("pipe:cat ") and total is None
    stream = ShardStream(urls, lambda s, r: s["__key__"], list, batch_size=10, shuffle_buffer=0)
    assert len([k for b in stream for k in b]) == 4
    with pytest.raises(FileNotFoundError, match="sam-prep"):
        resolve_shards(tmp_path / "nothing")
