"""The embedded sample dataset: built once as shards, read by the datamodules and the configs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import data_prep.sample as sample_mod
from sam_train.data.batch import SamBatch
from sam_train.data.shard_datamodules import (
    SampleSamDataModule,
    ShardMaeDataModule,
    ShardSamDataModule,
)
from sam_train.lit.callbacks import SkippedSamplesLogger


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "sample_shards"
    dm = SampleSamDataModule(
        str(root), img_size=64, build=sample_mod.ensure_sample_shards, batch_size=2, num_workers=0
    )
    dm.prepare_data()
    return root


def test_sample_layout(sample_root):
    train = json.loads((sample_root / "sam" / "train" / "manifest.json").read_text())
    val = json.loads((sample_root / "sam" / "val" / "manifest.json").read_text())
    mae = json.loads((sample_root / "mae" / "manifest.json").read_text())
    assert train["total"] + val["total"] == 20 and val["total"] == 5
    assert train["skipped"] == {} and mae["total"] >= 9
    coco = json.loads((sample_root / "sam" / "coco_train.json").read_text())
    names = {c["name"] for c in coco["categories"]}
    assert {"person", "chair", "circle", "star"} <= names
    assert all(
        (sample_root / "sam" / "images" / im["file_name"]).is_file() for im in coco["images"]
    )
    assert not list(sample_root.parent.glob(".sample_shards.building-*"))


def test_sam_datamodule_batches(sample_root):
    dm = SampleSamDataModule(
        str(sample_root), img_size=64, batch_size=2, num_workers=0, max_masks=8
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # ceil(15 / 2)
    b = batches[0]
    assert isinstance(b, SamBatch) and b.images.shape == (2, 3, 64, 64)
    assert b.masks.shape[:2] == b.mask_valid.shape and b.masks.shape[1] <= 8
    assert (b.boxes[b.mask_valid][:, 2:] > b.boxes[b.mask_valid][:, :2]).all()
    val = list(dm.val_dataloader())
    assert sum(x.batch_size for x in val) == 5 and dm.skip_counter.total == 0


def test_mae_shards_datamodule(sample_root):
    dm = ShardMaeDataModule(
        str(sample_root / "mae"),
        img_size=32,
        batch_size=4,
        num_workers=0,
        val_path=str(sample_root / "mae"),
    )
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert (
        sum(len(v) for v in dm.val_dataloader())
        == json.loads((sample_root / "mae" / "manifest.json").read_text())["total"]
    )


def test_configs_instantiate(sample_root):
    """Each stage-2 data config and shards_mae, composed with its stage, reads these shards."""
    cache = f"paths.cache_dir={sample_root.parent}"
    for stage, name, kind, path in [
        ("sam", "sam_sample", SampleSamDataModule, None),
        ("mae", "shards_mae", ShardMaeDataModule, sample_root / "mae"),
        ("sam", "coco", ShardSamDataModule, sample_root / "sam" / "train"),
        ("sam", "sa1b", ShardSamDataModule, sample_root / "sam" / "train"),
    ]:
        extra = [f"data.path={path}"] if path else []
        with initialize_config_module("sam_train.conf", version_base="1.3"):
            cfg = compose("train", overrides=[f"stage={stage}", f"data={name}", cache, *extra])
        dm = instantiate(cfg.data)
        assert isinstance(dm, kind) and dm.path and dm.batch_size >= 1
        batch = next(iter(dm.train_dataloader()))
        side = cfg.model.image_size if stage == "sam" else cfg.model.img_size
        images = batch.images if stage == "sam" else batch
        assert images.shape[-1] == side  # the data crops at the model's input size


class _Consumer(L.LightningModule):
    """Stands in for the SAM module: checks what a training step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = 0

    def training_step(self, batch: SamBatch, batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, SamBatch) and batch.masks.dtype == torch.bool
        self.seen += 1
        return (self.w * batch.images.mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_reads_samples_and_logs_skips(sample_root, tmp_path):
    dm = SampleSamDataModule(str(sample_root), img_size=32, batch_size=4, num_workers=1)
    module = _Consumer()
    trainer = cpu_trainer(
        max_epochs=2,
        limit_val_batches=0,
        callbacks=[SkippedSamplesLogger(every_n_steps=1)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert module.seen == 2 * 4  # ceil(15 / 4) batches per epoch
    # at 32 px some images keep no mask of 16+ pixels: skipped, counted, and logged
    skipped = dm.skip_counter.as_dict()
    assert skipped["corrupt"] == 0 and skipped["no_masks"] > 0
    assert 0 < trainer.callback_metrics["data/skipped"] <= dm.skip_counter.total


def test_ensure_is_race_safe(tmp_path, monkeypatch):
    def fake_build(out, seed=0, variants=2):
        (Path(out) / "sam" / "val").mkdir(parents=True)
        (Path(out) / "sam" / "val" / "manifest.json").write_text("{}")
        (Path(out) / "who").write_text(str(out))

    monkeypatch.setattr(sample_mod, "build_sample", fake_build)
    root = tmp_path / "s"
    assert sample_mod.ensure_sample_shards(root) == root
    first = (root / "who").read_text()
    assert sample_mod.ensure_sample_shards(root) == root and (root / "who").read_text() == first
    # a loser of the race: its rename fails because the winner's folder is already there
    monkeypatch.setattr(
        sample_mod.os, "rename", lambda a, b: (_ for _ in ()).throw(OSError("exists"))
    )
    (root / "sam" / "val" / "manifest.json").unlink()
    with pytest.raises(OSError):
        sample_mod.ensure_sample_shards(root)  # the winner's folder is incomplete: not hidden
    assert not list(tmp_path.glob(".s.building-*"))


def test_a_folder_built_with_other_variants_is_refused(tmp_path) -> None:
    root = tmp_path / "s"
    for split, total in (("train", 15), ("val", 5)):
        (root / "sam" / split).mkdir(parents=True)
        (root / "sam" / split / "manifest.json").write_text(json.dumps({"total": total}))
    assert sample_mod.ensure_sample_shards(root) == root  # 2 variants: 15 training images
    with pytest.raises(ValueError, match="another number of variants"):
        sample_mod.ensure_sample_shards(root, variants=8)


def test_more_variants_add_train_composites_and_keep_val() -> None:
    base = sample_mod.stage2_images(seed=0)
    more = sample_mod.stage2_images(seed=0, variants=3)
    split = {name: s for s, name, *_ in base}
    assert [n for s, n, *_ in more if s == "val"] == [n for s, n, *_ in base if s == "val"]
    by_name = {name: (s, rgb, anns) for s, name, rgb, anns in more}
    for s, name, rgb, anns in base:  # composites 0 and 1 of every photo: the same as before
        s2, rgb2, anns2 = by_name[name]
        assert s == s2 and (rgb == rgb2).all() and len(anns) == len(anns2)
    added = [n for s, n, *_ in more if n not in split]
    assert len(added) == len(sample_mod.COMPOSITE_PHOTOS) and all(n.endswith("_2") for n in added)
    assert all(s == "train" for s, n, *_ in more if n in added)
    with pytest.raises(ValueError, match="variants must be >= 2"):
        sample_mod.stage2_images(seed=0, variants=1)
