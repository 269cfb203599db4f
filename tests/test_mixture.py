"""Weighted mixtures of shard sources: proportions, determinism, disjoint ranks and workers,
exact resume, per-source validation and the refusals of bad sources."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import (
    MAE_TINY,
    assert_one_line_error,
    call_main,
    cpu_trainer,
    run_cli,
    sam_train_main,
)
from prep_helpers import as_list, image_folder
from run_helpers import cpu_ddp_dumping_weights
from torch.utils.data import DataLoader

from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions
from sam_train.data.mixture import (
    SOURCE_KEY,
    MixtureError,
    MixtureStream,
    default_name,
    parse_sources,
    resolve_source,
)
from sam_train.data.mixture_datamodules import MixtureMaeDataModule, MixtureSamDataModule


def source_key(sample: dict, rng: random.Random) -> str:
    """Decode to `source/key`: which sample was drawn (picklable for workers)."""
    return f"{sample[SOURCE_KEY]}/{sample['__key__']}"


def make_source(root: Path, n: int, maxcount: int) -> Path:
    src = image_folder(root / "src", n, size=(8, 8))
    convert_images(src, root / "shards", ShardOptions(maxcount=maxcount, progress=False))
    return root / "shards"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Three sources: many small shards, few shards (fewer than 4 streams), one shard."""
    root = tmp_path_factory.mktemp("mix")
    return {
        "a": make_source(root / "a", 23, maxcount=3),  # 8 shards
        "b": make_source(root / "b", 9, maxcount=3),  # 3 shards
        "c": make_source(root / "c", 6, maxcount=10),  # 1 shard
    }


def resolved(sources: dict[str, Path], weights: dict[str, float]):
    entries = [{"name": k, "path": str(sources[k]), "weight": w} for k, w in weights.items()]
    return [resolve_source(s) for s in parse_sources(entries)]


def stream(srcs, batch_size=10, samples=100, **kwargs) -> MixtureStream:
    return MixtureStream(
        srcs, source_key, as_list, batch_size, samples, shuffle_buffer=8, seed=5, **kwargs
    )


def test_ten_thousand_draws_match_the_weights_within_two_percent(sources):
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    keys = [k for b in stream(resolved(sources, weights), 100, 10_000) for k in b]
    assert len(keys) == 10_000
    counts = Counter(k.split("/")[0] for k in keys)
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w) < 0.02, (name, counts)


def test_stream_is_a_function_of_seed_and_epoch(sources):
    srcs = resolved(sources, {"a": 1.0, "b": 1.0, "c": 2.0})
    s = stream(srcs)
    first, second = list(s), list(s)
    assert first != second  # each epoch draws anew
    again = stream(srcs)
    assert list(again) == first and list(again) == second
    again.set_epoch(1)
    assert list(again) == second


def _rank_epoch(srcs, rank: int, queue) -> None:
    torch.set_num_threads(1)
    s = stream(srcs, batch_size=3, samples=48, rank=rank, world_size=2, num_workers=2)
    queue.put((rank, list(DataLoader(s, batch_size=None, num_workers=2))))


def test_two_ranks_with_two_workers_each_never_read_the_same_sample(sources):
    srcs = resolved(sources, {"a": 0.4, "b": 0.3, "c": 0.3})
    ctx = mp.get_context("fork")  # two processes, one per rank, each with two loader workers
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_epoch, args=(srcs, r, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert len(got[0]) == len(got[1]) == 8  # 48 samples / (2 ranks x 2 workers x 3) x 2 workers
    # the loader alternates workers: batch i of a rank comes from worker i % 2
    readers = [[k for b in got[r][w::2] for k in b] for r in (0, 1) for w in (0, 1)]
    for i, a in enumerate(readers):
        for b in readers[i + 1 :]:
            assert not set(a) & set(b)  # no two streams share a sample all epoch long
    assert {k.split("/")[0] for r in readers for k in r} == {"a", "b", "c"}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_rest_of_the_same_epoch(sources, workers):
    srcs = resolved(sources, {"a": 0.6, "b": 0.4})
    full = stream(srcs, batch_size=2, samples=24, num_workers=workers)
    full.set_epoch(1)
    epoch1 = list(DataLoader(full, batch_size=None, num_workers=workers))
    assert len(epoch1) == 12
    for done in (3, 7):
        restarted = stream(srcs, batch_size=2, samples=24, num_workers=workers)
        restarted.resume(1, done)
        loader = DataLoader(restarted, batch_size=None, num_workers=workers)
        assert list(loader) == epoch1[done:]


class KeyMixture(MixtureMaeDataModule):
    """Batches of `source/key` strings: what was read, in order."""

    def decoder(self, train: bool):
        return source_key

    def collate(self, items: list):
        return as_list(items)


class RecordKeys(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: dict[int, list[list[str]]] = {}

    def training_step(self, batch: list[str], batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).append(batch)
        return (self.w**2).sum()

    def configure_optimizers(self):
        # as the stage modules do: Lightning builds the training loader here, before it
        # restores the loop counters of a checkpoint
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_keys(sources, ckpt_dir: Path, ckpt_path=None) -> dict[int, list[list[str]]]:
    model = RecordKeys()
    data = KeyMixture(
        [
            {"name": "a", "path": str(sources["a"]), "weight": 2},
            {"name": "c", "path": str(sources["c"]), "weight": 1},
        ],
        img_size=8,
        batch_size=2,
        num_workers=0,
        samples_per_epoch=12,
        shuffle_buffer=4,
    )
    every_3 = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step}", every_n_train_steps=3, save_top_k=-1
    )
    trainer = cpu_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[every_3])
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model.seen


def test_training_resumed_from_a_mid_epoch_checkpoint_continues_the_same_sequence(
    sources, tmp_path
):
    straight = fit_keys(sources, tmp_path / "a")
    assert [len(straight[e]) for e in range(3)] == [6, 6, 6]
    resumed = fit_keys(sources, tmp_path / "b", ckpt_path=tmp_path / "a" / "step=9.ckpt")
    assert resumed[1] == straight[1][3:]  # step 9 = 3 batches into epoch 1
    assert resumed[2] == straight[2]


# ---------------------------------------------------------------- per-source validation


def test_mae_validation_reports_each_source_and_overall(sources, tmp_path):
    from sam_train.lit.mae_module import MaeModule
    from sam_train.lit.optim import OptimConfig
    from sam_train.models.mae import MaskedAutoencoder

    data = MixtureMaeDataModule(
        [
            {"name": "big", "path": str(sources["a"]), "weight": 1, "val_path": str(sources["a"])},
            {"path": str(sources["b"]), "weight": 1, "val_path": str(sources["b"])},
        ],
        img_size=16,
        batch_size=4,
        num_workers=0,
    )
    assert data.val_source_names == ["big", "shards"]
    mae = MaskedAutoencoder(
        img_size=16,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    module = MaeModule(mae, OptimConfig())
    per_loader = cpu_trainer().validate(module, data, verbose=False)  # one dict per source
    metrics = {k: v for d in per_loader for k, v in d.items()}
    assert {"val/big/loss", "val/shards/loss", "val/loss"} <= set(metrics)
    big, small = metrics["val/big/loss"], metrics["val/shards/loss"]
    # overall = the sample-weighted mean (23 and 9 validation images)
    assert metrics["val/loss"] == pytest.approx((23 * big + 9 * small) / 32, rel=1e-5)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "zero", "weight": 0}, "source 'zero' has weight 0"),
        ({"name": "neg", "weight": -0.5}, "source 'neg' has weight -0.5"),
        ({"name": "word", "weight": "lots"}, "source 'word' has weight 'lots'"),
        ({"name": "odd", "weight": 1, "wieght": 2}, "source 'odd' has unknown keys ['wieght']"),
    ],
)
def test_bad_weights_are_refused_naming_the_source(sources, entry, message):
    good = {"path": str(sources["a"]), "weight": 1}
    with pytest.raises(MixtureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_sources([good, {"path": str(sources["b"]), **entry}])


def test_all_zero_weights_are_refused(sources):
    with pytest.raises(MixtureError, match="source 'shards' has weight 0"):
        parse_sources([{"path": str(sources["a"]), "weight": 0}])


def test_missing_empty_and_wrong_stage_sources_are_refused(sources, tmp_path):
    with pytest.raises(
        MixtureError, match=r"source 'gone' \(train\): shard path .* does not exist"
    ):
        MixtureMaeDataModule([{"path": str(tmp_path / "gone"), "weight": 1}], img_size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"shards": [], "total": 0}))
    with pytest.raises(MixtureError, match=r"source 'empty' \(train\): no shards in"):
        MixtureMaeDataModule([{"path": str(empty), "weight": 1}], img_size=8)
    only_images = {"name": "photos", "path": str(sources["a"]), "weight": 1}
    with pytest.raises(MixtureError, match="source 'photos' has no samples for stage=sam"):
        MixtureSamDataModule([only_images], img_size=8)
    with pytest.raises(MixtureError, match="two sources are called 'shards'"):
        parse_sources([{"path": str(sources["a"])}, {"path": str(sources["b"])}])


def test_a_source_smaller_than_the_reading_streams_is_refused(sources):
    srcs = resolved(sources, {"c": 1.0})  # 6 samples
    with pytest.raises(MixtureError, match="source 'c' has 6 samples, fewer than the 8"):
        stream(srcs, world_size=2, num_workers=4, rank=0)


def test_default_names_are_the_folder_names():
    assert default_name("/data/sa1b/") == "sa1b"
    assert default_name("https://host/coco/shard-{000000..000009}.tar") == "coco"
    assert default_name("pipe:curl -s http://h/lvis/shard-000000.tar") == "lvis"
    assert default_name(["/x/mine/shard-000000.tar"]) == "mine"


@pytest.mark.parametrize(
    ("stage", "spec", "fragments"),
    [
        ("mae", "[{{path: {a}, weight: 1}}, {{name: zero, path: {b}, weight: 0}}]",
         ["data: source 'zero' has weight 0"]),
        ("mae", "[{{path: {a}, weight: -1}}]", ["source 'shards' has weight -1.0"]),
        ("mae", "[{{path: /no/such/gone, weight: 1}}]", ["source 'gone' (train)", "does not exist"]),
        ("sam", "[{{name: photos, path: {a}, weight: 1}}]", ["'photos' has no samples for stage=sam"]),
        ("mae", "[{{path: 's3://bucket/shard-{{000000..000009}}.tar', weight: 1}}]",
         ["reading s3:// needs s3fs"]),
    ],
)  # fmt: skip
def test_sam_train_refuses_a_bad_mixture_in_one_line(
    sources, tmp_path, stage, spec, fragments, monkeypatch, capfd
):
    if "s3://" in spec:
        try:
            import s3fs  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("s3fs is installed: s3:// has its reader")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_TRAIN_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setattr("sys.argv", ["sam-train"])
    data = "data=mix_mae" if stage == "mae" else "data=mix"
    arg = "data.sources=" + spec.format(a=sources["a"], b=sources["b"])
    tiny = MAE_TINY if stage == "mae" else []
    res = call_main(sam_train_main, [f"stage={stage}", data, *tiny, arg], capfd)
    assert_one_line_error(res, "sam-train", *fragments)
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- kill -9 and resume


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(sources, tmp_path):
    exact = [
        *MAE_TINY,
        "data=mix_mae",
        f"data.sources=[{{name: a, path: {sources['a']}, weight: 0.6, val_path: {sources['b']}}},"
        f" {{name: b, path: {sources['b']}, weight: 0.4}}]",
        "data.num_workers=1",  # the replay runs inside a loader worker
        "data.samples_per_epoch=24",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "trainer.deterministic=true",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = run_cli("sam-train", "stage=mae", *exact, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    kill = ["+callbacks.kill._target_=run_helpers.SigkillAtStep", "+callbacks.kill.step=9"]
    res = run_cli("sam-train", "stage=mae", *exact, f"hydra.run.dir={killed}", *kill, cwd=tmp_path)
    assert res.returncode == -9, "the run was meant to die by SIGKILL"
    step = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 6 < step < 12, step  # mid second epoch (6 steps per epoch)
    # the same folder: it resumes from its last.ckpt
    res = run_cli("sam-train", "stage=mae", *exact, f"hydra.run.dir={killed}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_a_mixture_in_step(sources, tmp_path):
    dump = tmp_path / "dump"
    res = run_cli(
        "sam-train",
        "stage=mae",
        *[
            *MAE_TINY,
            "data=mix_mae",
            f"data.sources=[{{name: a, path: {sources['a']}, weight: 0.5, val_path: {sources['b']}}},"
            f" {{name: c, path: {sources['c']}, weight: 0.5, val_path: {sources['c']}}}]",
            "data.num_workers=0",
            "data.samples_per_epoch=16",
            *cpu_ddp_dumping_weights(tmp_path / "run", dump),
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert len(r0["batches"]) == len(r1["batches"]) == 2  # 16 samples / 2 ranks / batch 4
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/a/loss" in metrics and "val/c/loss" in metrics
