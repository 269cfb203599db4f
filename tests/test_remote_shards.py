"""Shards over HTTP from a local server (127.0.0.1): http:// and pipe:curl read the same
samples as local files; a missing and a corrupt shard are skipped and counted; transient
failures are retried with back-off; a scheme without its package is one line."""

from __future__ import annotations

import shutil

import pytest
from http_helpers import serve_folder
from test_prep_fixtures import as_list, image_folder, key_of

from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions
from sam_train.data import remote
from sam_train.data.remote import RemoteError
from sam_train.data.shards import ShardStream, SkipCounter, resolve_shards

N_SHARDS = 4  # 11 images, 3 per shard


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A shard folder with shard 2 corrupt, plus the pattern naming a 5th, missing shard."""
    root = tmp_path_factory.mktemp("remote")
    src = image_folder(root / "src", 11, size=(8, 8))
    convert_images(src, root / "shards", ShardOptions(maxcount=3, progress=False))
    shutil.copytree(root / "shards", root / "bad")
    (root / "bad" / "shard-000002.tar").write_bytes(b"not a tar file" * 100)
    return root


def keys_of(urls, counter) -> list[str]:
    stream = ShardStream(
        urls, key_of, as_list, 100, shuffle_buffer=0, shuffle_shards=False, counter=counter
    )
    return sorted(k for b in stream for k in b)


def test_http_and_pipe_curl_read_what_local_files_hold(served):
    local = keys_of(resolve_shards(served / "shards")[0], SkipCounter())
    assert len(local) == 11
    with serve_folder(served) as (base, hits):
        pattern = f"{base}/shards/shard-{{000000..{N_SHARDS - 1:06d}}}.tar"
        assert keys_of(resolve_shards(pattern)[0], SkipCounter()) == local
        piped = [f"pipe:curl -s -f {base}/shards/shard-{i:06d}.tar" for i in range(N_SHARDS)]
        assert keys_of(piped, SkipCounter()) == local
        urls, total = resolve_shards(f"{base}/shards/")  # a folder URL: its manifest
        assert total == 11 and keys_of(urls, SkipCounter()) == local
        assert hits["shards/manifest.json"] == 2  # the pattern's total and the folder's


@pytest.mark.parametrize("kind", ["http", "pipe"])
def test_a_missing_and_a_corrupt_shard_are_skipped_and_counted(served, kind):
    with serve_folder(served) as (base, _):
        names = [f"bad/shard-{i:06d}.tar" for i in range(N_SHARDS + 1)]  # the last is missing
        if kind == "http":
            urls = [f"{base}/{n}" for n in names]
        else:
            urls = [f"pipe:curl -s -f {base}/{n}" for n in names]
        counter = SkipCounter()
        keys = keys_of(urls, counter)
    assert len(keys) == 11 - 3  # every sample of the good shards
    assert counter.as_dict()["shard_error"] == 2


def test_transient_failures_are_retried_and_missing_shards_are_not(served, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    flaky = {"shards/shard-000001.tar": 2}  # two 503s, then the shard
    with serve_folder(served, flaky=flaky) as (base, hits):
        urls = [f"{base}/shards/shard-{i:06d}.tar" for i in range(N_SHARDS)]
        counter = SkipCounter()
        assert len(keys_of(urls + [f"{base}/shards/gone.tar"], counter)) == 11
        assert hits["shards/shard-000001.tar"] == 3
        assert hits["shards/gone.tar"] == 1  # 404: no retry
        assert counter.as_dict()["shard_error"] == 1


def test_retries_give_up_with_the_url(served, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    with serve_folder(served, flaky={"shards/shard-000000.tar": 99}) as (base, hits):
        with pytest.raises(RemoteError, match=r"shard-000000.tar: cannot be opened after 5 tries"):
            remote.open_remote(f"{base}/shards/shard-000000.tar")
        assert hits["shards/shard-000000.tar"] == 5


def test_a_scheme_without_its_package_is_one_line():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(RemoteError, match=r"s3://bucket/x.tar: reading s3:// needs s3fs"):
            resolve_shards("s3://bucket/x.tar")
    with pytest.raises(RemoteError, match="unknown URL scheme 'nosuch'"):
        resolve_shards("nosuch://bucket/x.tar")
