"""`sam-prep ... --workers N`: every converter writes byte-identical shards and manifest with
N worker processes and with one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_sam
from formats_helpers import save_label, shard_bytes
from prep_helpers import image_folder, make_coco, make_sa1b, write_image

from data_prep.clip_embed import convert_clip_embed
from data_prep.coco import convert_coco
from data_prep.images import convert_images
from data_prep.labelme import convert_labelme
from data_prep.masks import convert_masks
from data_prep.sa1b import convert_sa1b
from data_prep.shard_writer import MANIFEST, ShardOptions
from data_prep.teacher_embed import convert_teacher_embed
from sam_train.weights.safetensors_io import save_weights


def label_folder(root: Path) -> tuple[Path, Path]:
    """Three images with one to three rectangles each as instance label images."""
    for i in range(3):
        write_image(root / "imgs" / f"im{i}.png", 40, 32, seed=i)
        label = np.zeros((32, 40), dtype=np.uint8)
        for k in range(1 + i):
            label[3 + 9 * k : 10 + 9 * k, 4 + 8 * k : 16 + 8 * k] = k + 1
        save_label(root / "labels" / f"im{i}.png", label)
    return root / "imgs", root / "labels"


def labelme_folder(root: Path) -> Path:
    """Three labelme files, each a rectangle and a polygon over its own photo."""
    for i in range(3):
        write_image(root / f"p{i}.jpg", 48, 40, seed=i)
        shapes = [
            {"label": "box", "points": [[4, 5], [20 + i, 18]], "shape_type": "rectangle"},
            {"label": "tri", "points": [[30, 4], [44, 30], [26, 36]], "shape_type": "polygon"},
        ]
        doc = {"shapes": shapes, "imagePath": f"p{i}.jpg", "imageHeight": 40, "imageWidth": 48}
        (root / f"p{i}.json").write_text(json.dumps(doc))
    return root


def embed_teacher(root: Path, out: Path, options: ShardOptions) -> dict:
    """A tiny SAM's embeddings added to stage-2 shards (inputs made once under `root`)."""
    teacher = root / "teacher.safetensors"
    if not teacher.is_file():
        quiet = ShardOptions(maxcount=1, progress=False)
        convert_coco(*make_coco(root / "coco"), root / "src", quiet)
        sam = tiny_sam()
        save_weights(teacher, sam.state_dict(), {"architecture": sam.architecture})
    return convert_teacher_embed(root / "src", out, teacher, 64, options)


def embed_clip(root: Path, out: Path, options: ShardOptions) -> dict:
    """A tiny CLIP's region embeddings added to stage-2 shards (inputs made once)."""
    pytest.importorskip("open_clip")
    from text_helpers import tiny_clip_files

    if not (root / "src").is_dir():
        quiet = ShardOptions(maxcount=1, progress=False)
        convert_coco(*make_coco(root / "coco"), root / "src", quiet)
    cfg, ckpt = tiny_clip_files(root / "clip")
    return convert_clip_embed(
        root / "src", out, cfg, ckpt, image_size=64, min_area=4, options=options
    )


_MADE: dict = {}


def made_once(root: Path, make):
    """The inputs under `root`, made on first use only: both conversions of a test read the
    same files (a rewritten input has a new mtime, which the shards' plan digest records)."""
    if root not in _MADE:
        _MADE[root] = make(root)
    return _MADE[root]


CONVERTERS = {
    "images": lambda r, out, o: convert_images(
        made_once(r / "in", lambda d: image_folder(d, 5)), out, o
    ),
    "coco": lambda r, out, o: convert_coco(*made_once(r / "in", make_coco), out, o),
    "sa1b": lambda r, out, o: convert_sa1b(
        made_once(r / "in", lambda d: make_sa1b(d, n=4)), out, o
    ),
    "masks": lambda r, out, o: convert_masks(*made_once(r / "in", label_folder), out, o),
    "labelme": lambda r, out, o: convert_labelme(made_once(r / "in", labelme_folder), out, o),
    "teacher-embed": lambda r, out, o: embed_teacher(r / "in", out, o),
    "clip-embed": lambda r, out, o: embed_clip(r / "in", out, o),
}
# a process pool costs ~15 s to start on a loaded 2-core machine: the default run checks one
# stage-2 converter, the slow run every one
QUICK = {"coco"}


@pytest.mark.parametrize(
    "name",
    [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CONVERTERS)],
)
def test_two_workers_write_what_one_process_writes(name, tmp_path):
    convert = CONVERTERS[name]
    one = convert(tmp_path, tmp_path / "one", ShardOptions(maxcount=1, workers=1, progress=False))
    two = convert(tmp_path, tmp_path / "two", ShardOptions(maxcount=1, workers=2, progress=False))
    assert len(one["shards"]) >= 2, "fewer than two shards would not use the workers"
    assert one["total"] == two["total"] > 0
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    written = [(tmp_path / d / MANIFEST).read_text() for d in ("one", "two")]
    assert written[0] == written[1].replace(str(tmp_path / "two"), str(tmp_path / "one"))
