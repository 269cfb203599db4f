"""Restarting from a checkpoint on shard streams: the epoch count goes on where it stopped,
a partly trained epoch goes on with the batches the uninterrupted run read next (not a replay
of its first batches), and later epochs are the uninterrupted run's."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from prep_helpers import as_list, image_folder, key_of
from torch.utils.data import DataLoader

from data_prep.images import convert_images
from data_prep.shard_writer import ShardOptions
from sam_train.data.shard_datamodules import ShardDataModule
from sam_train.data.shards import ShardStream, resolve_shards
from sam_train.lit.progress import epoch_position

BATCHES_PER_EPOCH = 6  # 12 samples per epoch, batch 2, one process


class KeyShards(ShardDataModule):
    """Batches of sample keys: what was read, in order."""

    def decoder(self, train: bool):
        return key_of

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


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    src = image_folder(root / "src", 23, size=(8, 8))
    convert_images(src, root / "shards", ShardOptions(maxcount=3, progress=False))
    return root / "shards"


def fit(shard_dir, ckpt_dir, epochs: int, ckpt_path=None) -> dict[int, list[list[str]]]:
    model = RecordKeys()
    data = KeyShards(
        str(shard_dir), batch_size=2, num_workers=0, samples_per_epoch=12, shuffle_buffer=4
    )
    every_3 = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step}", every_n_train_steps=3, save_top_k=-1
    )
    trainer = cpu_trainer(
        max_epochs=epochs,
        enable_checkpointing=True,
        callbacks=[every_3],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model.seen


def test_fresh_runs_start_at_epoch_zero() -> None:
    assert epoch_position(None) == (0, 0)


def test_resume_mid_epoch_continues_with_the_uninterrupted_runs_batches(
    shard_dir, tmp_path
) -> None:
    straight = fit(shard_dir, tmp_path / "a", epochs=3)
    assert [len(straight[e]) for e in range(3)] == [BATCHES_PER_EPOCH] * 3
    assert straight[0] != straight[1]

    resumed = fit(shard_dir, tmp_path / "b", epochs=3, ckpt_path=tmp_path / "a" / "step=9.ckpt")
    # step 9 = 3 batches into epoch 1: the epoch ends with the 3 batches the uninterrupted run
    # read there (a restarted process without `resume` would replay epoch 0's batches)
    assert sorted(resumed) == [1, 2]
    assert resumed[1] == straight[1][3:]
    assert resumed[2] == straight[2]  # later epochs: exactly the uninterrupted run's


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resampled_stream_restarted_mid_epoch_gives_the_rest_of_the_same_epoch(
    shard_dir, workers
) -> None:
    def stream() -> ShardStream:
        urls, total = resolve_shards(str(shard_dir))
        return ShardStream(
            urls, key_of, as_list, 2, resampled=True, samples_per_epoch=12, total=total,
            shuffle_buffer=4, seed=3, rank=0, world_size=1, num_workers=workers,
        )  # fmt: skip

    full = stream()
    full.set_epoch(1)
    epoch1 = list(DataLoader(full, batch_size=None, num_workers=workers))
    assert len(epoch1) == 6
    for done in (1, 3, 4):  # with two workers: batch `done` comes from either of them
        restarted = stream()
        restarted.resume(1, done)
        assert list(DataLoader(restarted, batch_size=None, num_workers=workers)) == epoch1[done:]


def test_resume_at_an_epoch_end_continues_exactly(shard_dir, tmp_path) -> None:
    straight = fit(shard_dir, tmp_path / "a", epochs=3)
    resumed = fit(shard_dir, tmp_path / "b", epochs=3, ckpt_path=tmp_path / "a" / "step=6.ckpt")
    assert sorted(resumed) == [1, 2]
    assert resumed[1] == straight[1] and resumed[2] == straight[2]
