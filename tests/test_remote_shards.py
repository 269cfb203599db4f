"""Shards over HTTP from a local server (127.0.0.1): http:// and pipe:curl read the same
samples as local files; a missing and a corrupt shard are skipped and counted; transient
failures are retried with back-off; a scheme without its package is one line."""

from __future__ import annotations

import base64
import shutil

import pytest
from conftest import MAE_TINY, SAM_TINY, run_output, train_in_process
from http_helpers import serve_folder
from prep_helpers import as_list, image_folder, key_of, make_coco

from data_prep.coco import convert_coco
from data_prep.common import PrepError
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
    shutil.copytree(root / "shards", root / "shards_bad")
    (root / "shards_bad" / "shard-000002.tar").write_bytes(b"not a tar file" * 100)
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
        names = [
            f"shards_bad/shard-{i:06d}.tar" for i in range(N_SHARDS + 1)
        ]  # the last is missing
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


def test_inspect_reads_a_shard_folder_over_http(served, tmp_path):
    from data_prep.inspect_shards import shard_stats, write_overlay

    images, ann = make_coco(tmp_path / "src")
    convert_coco(images, ann, served / "inspect", ShardOptions(maxcount=1, progress=False))
    local = shard_stats(served / "inspect")
    with serve_folder(served) as (base, _):
        remote_stats = shard_stats(f"{base}/inspect/")
        png = write_overlay(f"{base}/inspect", tmp_path / "overlay.png", n=2)
        with pytest.raises(PrepError, match="nowhere/manifest.json' cannot be read"):
            shard_stats(f"{base}/nowhere")
    assert {**remote_stats, "folder": ""} == {**local, "folder": ""}
    assert local["masks"] > 0 and png.is_file()


# ---------------------------------------------------------------- both stages, end to end

RUN = [
    "data.num_workers=0",
    "data.samples_per_epoch=6",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.skipped_samples.every_n_steps=1",
]


def sources_arg(base: str, folder: str, first: int, last: int, good: list[int]) -> str:
    """A mixture of the same shards over http:// (a pattern with a corrupt and a missing
    shard) and over pipe:curl (the good ones), each validated on its own."""
    pattern = f"{base}/{folder}_bad/shard-{{{first:06d}..{last:06d}}}.tar"
    piped = [f"'pipe:curl -s -f {base}/{folder}/shard-{i:06d}.tar'" for i in good]
    return (
        f"data.sources=[{{name: web, path: '{pattern}', weight: 0.5, val_path: '{base}/{folder}'}},"
        f" {{name: piped, path: [{', '.join(piped)}], weight: 0.5, val_path: [{piped[0]}]}}]"
    )


def metric_names(run) -> list[str]:
    return (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.slow
def test_both_stages_train_from_http_and_pipe_curl_past_a_missing_and_a_corrupt_shard(
    served, tmp_path
):
    images, ann = make_coco(tmp_path / "coco_src")
    coco = convert_coco(images, ann, served / "coco", ShardOptions(maxcount=1, progress=False))
    good = [int(s["name"][6:12]) for s in coco["shards"]]  # shards of skipped images are absent
    shutil.copytree(served / "coco", served / "coco_bad")
    missing = next(i for i in range(good[-1]) if i not in good)
    corrupt = served / "coco_bad" / f"shard-{missing:06d}.tar"  # fill one gap with garbage
    corrupt.write_bytes(b"garbage" * 200)
    logs = {}
    with serve_folder(served) as (base, hits):
        for stage, data, tiny, sources in [
            (
                "mae",
                "mix_mae",
                [*MAE_TINY, "data.batch_size=2"],
                sources_arg(base, "shards", 0, N_SHARDS, list(range(N_SHARDS))),
            ),
            ("sam", "mix", SAM_TINY, sources_arg(base, "coco", 0, good[-1], good)),
        ]:
            with run_output() as out:
                train_in_process(
                    [f"stage={stage}", f"data={data}", *tiny, *RUN, sources], tmp_path / stage
                )
            logs[stage] = out.getvalue()
    for log in logs.values():
        assert "(shard_error)" in log, log[-3000:]  # named in the log
    assert hits["shards_bad/shard-000004.tar"] >= 1  # asked for, missing (404)
    mae_metrics, sam_metrics = metric_names(tmp_path / "mae"), metric_names(tmp_path / "sam")
    assert {"data/skipped_shard_error", "val/web/loss", "val/piped/loss", "val/loss"} <= set(
        mae_metrics
    )
    assert {"data/skipped_shard_error", "val/web/miou_point_oracle", "val/miou_point_oracle"} <= (
        set(sam_metrics)
    )
    assert "val/piped/miou_box" in sam_metrics


def test_an_http_shard_is_one_get_read_a_megabyte_at_a_time(tmp_path, monkeypatch):
    """No HEAD or range requests; the tar reader's 10 KB reads come from a buffer filled by
    large reads of the response, and the bytes come out unchanged."""
    import http.client

    payload = bytes(range(256)) * (3 * 4096)  # 3 MB
    (tmp_path / "blob.bin").write_bytes(payload)
    calls = []
    readinto = http.client.HTTPResponse.readinto
    monkeypatch.setattr(
        http.client.HTTPResponse, "readinto", lambda self, b: calls.append(1) or readinto(self, b)
    )
    with serve_folder(tmp_path) as (base, hits):
        with remote.open_remote(f"{base}/blob.bin") as f:
            assert b"".join(iter(lambda: f.read(10240), b"")) == payload
    assert dict(hits) == {"blob.bin": 1}
    assert len(payload) // 10240 > 300 and len(calls) < 10, len(calls)


def test_a_missing_http_shard_is_one_line_and_not_retried(served):
    with serve_folder(served) as (base, hits):
        with pytest.raises(RemoteError) as err:
            remote.open_remote(f"{base}/shards/gone.tar")
        assert remote.read_text(f"{base}/shards/gone.json") is None
    assert str(err.value) == f"{base}/shards/gone.tar: cannot be opened (not found: HTTP 404)"
    assert hits["shards/gone.tar"] == 1


def test_a_body_cut_short_is_a_shard_error_not_a_shorter_shard(served, caplog):
    """The server promises the whole shard but closes after its first sample's files: read
    through, that is a valid tar of one sample, so only the Content-Length can tell."""
    import tarfile

    name = "shards/shard-000001.tar"
    with tarfile.open(served / name) as tar:
        members = tar.getmembers()
    second = next(m for m in members if m.name.split(".")[0] != members[0].name.split(".")[0])
    with serve_folder(served, cut={name: second.offset}) as (base, _):
        counter = SkipCounter()
        keys = keys_of([f"{base}/{name}"], counter)
    assert len(keys) <= 1 and counter.as_dict()["shard_error"] == 1  # of 3 samples
    assert "shard-000001.tar: connection closed" in caplog.text


def test_user_and_password_in_an_http_url_are_basic_auth(served):
    with serve_folder(served) as (base, hits):
        url = base.replace("http://", "http://me:p%40ss@") + "/shards/manifest.json"
        assert '"total"' in remote.read_text(url)
    token = base64.b64encode(b"me:p@ss").decode()
    assert hits[f"Authorization Basic {token}"] == 1 and hits["shards/manifest.json"] == 1
