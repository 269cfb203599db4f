"""Reading shards on 2 ranks x 2 workers: partition without resampling, equal batch counts with
resampling; corrupt samples are skipped and counted across worker processes."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from prep_helpers import as_list, image_folder, key_of
from torch.utils.data import DataLoader

from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions, write_tar
from sam_train.data.shard_datamodules import MaeDecode, stack_images
from sam_train.data.shards import ShardStream, SkipCounter, resolve_shards
from sam_train.data.transforms import MaeEvalTransform


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    src = image_folder(root / "src", 23, size=(8, 8))
    convert_images(
        src, root / "shards", ShardOptions(maxcount=3, progress=False)
    )  # 8 uneven shards
    return resolve_shards(root / "shards")


def _rank_batches(urls, total, rank, resampled, batch_size=2, workers=2):
    stream = ShardStream(
        urls,
        key_of,
        as_list,
        batch_size,
        resampled=resampled,
        total=total,
        shuffle_buffer=4,
        rank=rank,
        world_size=2,
        num_workers=workers,
        seed=3,
    )
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader), loader


def test_without_resampling_ranks_partition_the_samples(shards):
    urls, total = shards
    keys = []
    for rank in (0, 1):
        batches, _ = _rank_batches(urls, total, rank, resampled=False)
        keys.append([k for b in batches for k in b])
    assert len(set(keys[0]) & set(keys[1])) == 0
    assert sorted(keys[0] + keys[1]) == sorted(set(keys[0]) | set(keys[1]))  # no duplicates
    assert len(keys[0]) + len(keys[1]) == total == 23


def test_with_resampling_every_rank_yields_the_same_batch_count(shards):
    urls, total = shards
    counts = []
    for rank in (0, 1):
        batches, loader = _rank_batches(urls, total, rank, resampled=True, batch_size=3)
        assert len(batches) == len(loader)  # Lightning's epoch length is exact
        assert all(len(b) == 3 for b in batches)
        counts.append(len(batches))
    assert counts[0] == counts[1] == 2 * 2  # ceil(23 / (2 ranks * 2 workers * 3)) per worker


def test_epochs_reshuffle_and_runs_repeat(shards):
    urls, total = shards
    stream = ShardStream(urls, key_of, as_list, 100, total=total, shuffle_buffer=8, seed=1)
    first, second = list(stream)[0], list(stream)[0]
    assert sorted(first) == sorted(second) and first != second
    again = ShardStream(urls, key_of, as_list, 100, total=total, shuffle_buffer=8, seed=1)
    assert list(again)[0] == first


def test_corrupt_sample_is_skipped_and_counted(tmp_path):
    good = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (12, 10), (200, 10, 10)).save(good, format="JPEG")
    samples = [(f"s{i}", {"jpg": good.getvalue()}) for i in range(5)]
    samples[2] = ("s2", {"jpg": b"\xff\xd8 truncated"})
    write_tar(tmp_path / "shard-000000.tar", samples)
    counter = SkipCounter()
    stream = ShardStream(
        [str(tmp_path / "shard-000000.tar")],
        MaeDecode(MaeEvalTransform(8)),
        stack_images,
        batch_size=2,
        shuffle_buffer=0,
        counter=counter,
        num_workers=1,
    )
    batches = list(DataLoader(stream, batch_size=None, num_workers=1))  # counted inside a worker
    assert [b.shape for b in batches] == [torch.Size([2, 3, 8, 8])] * 2
    assert counter.total == 1 and counter.as_dict()["corrupt"] == 1


def test_truncated_shard_is_counted_not_fatal(tmp_path, shards):
    urls, total = shards
    with tarfile.open(urls[0]) as tar:
        second = tar.getmembers()[1].offset_data  # cut inside the second member
    (tmp_path / "cut.tar").write_bytes(open(urls[0], "rb").read()[: second + 10])
    counter = SkipCounter()
    stream = ShardStream(
        [str(tmp_path / "cut.tar"), urls[1]],
        key_of,
        as_list,
        100,
        shuffle_buffer=0,
        shuffle_shards=False,
        counter=counter,
    )
    keys = [k for b in stream for k in b]
    assert counter.as_dict()["shard_error"] == 1 and len(keys) == 4
    with tarfile.open(urls[1]) as tar:
        assert {m.name.split(".")[0] for m in tar.getmembers()} <= set(keys)
