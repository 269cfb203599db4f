"""Two-process DDP on CPU, non-finite losses, samplers (exact resume: test_exact_resume.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import MAE_TINY, run_cli
from run_helpers import cpu_ddp_dumping_weights

from sam_train.data.resumable import ResumableDataLoader, ResumableSampler, split_key
from sam_train.lit.guards import NonFiniteLossError, NonFiniteLossGuard


@pytest.mark.slow
def test_two_process_ddp_on_cpu_ends_with_identical_weights_on_disjoint_data(tmp_path):
    dump = tmp_path / "dump"
    res = run_cli(
        "sam-train",
        "stage=mae",
        *MAE_TINY,
        "data.samples_per_epoch=16",
        *cpu_ddp_dumping_weights(tmp_path / "run", dump),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert len(r0["batches"]) == len(r1["batches"]) == 2  # 16 samples / 2 ranks / batch 4
    seen0 = {tuple(x.flatten()[:16].tolist()) for b in r0["batches"] for x in b}
    seen1 = {tuple(x.flatten()[:16].tolist()) for b in r1["batches"] for x in b}
    assert len(seen0) == len(seen1) == 8 and not seen0 & seen1


def rank_shares(monkeypatch, n: int, world: int) -> list[list[int]]:
    shares = []
    for rank in range(world):
        monkeypatch.setattr("sam_train.data.resumable.dist_rank_world", lambda r=rank: (r, world))
        s = ResumableSampler(n, seed=1)
        s.set_epoch(2)
        shares.append([i for i, _ in s])
    return shares


def test_sampler_splits_ranks_disjointly(monkeypatch):
    shares = rank_shares(monkeypatch, 12, 3)
    assert sorted(sum(shares, [])) == list(range(12))


def test_uneven_split_pads_so_every_rank_gets_as_many_batches(monkeypatch):
    shares = rank_shares(monkeypatch, 10, 3)
    assert [len(x) for x in shares] == [4, 4, 4]  # no rank waits on another at the epoch end
    assert set().union(*shares) == set(range(10))


def test_sampler_skips_what_a_checkpoint_says_was_served():
    s = ResumableSampler(12, seed=3)
    full = list(s)
    s.skip_next(5)
    assert list(s) == full[5:]
    assert list(s) == full  # one-shot skip


class _Keys(torch.utils.data.Dataset):
    """Each sample is its (index, sample_seed): a batch says what was read, augmentation seed
    included."""

    def __len__(self) -> int:
        return 14

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(split_key(key))


def _key_loader() -> ResumableDataLoader:
    return ResumableDataLoader(_Keys(), batch_size=3, sampler=ResumableSampler(14, seed=5))


def test_loader_state_resumes_at_the_next_unread_batch():
    straight = _key_loader()
    straight.resumable_sampler.set_epoch(2)
    full = list(straight)  # 5 batches: 3, 3, 3, 3, 2 samples
    killed = _key_loader()
    killed.resumable_sampler.set_epoch(2)
    batches = iter(killed)
    read = [next(batches) for _ in range(2)]
    state = killed.state_dict()
    assert state == {"epoch": 2, "batches_served": 2}

    resumed = _key_loader()  # a new process: fresh loader, state from the checkpoint
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(read + rest, full))
    assert resumed.state_dict() == {"epoch": 2, "batches_served": len(full)}


class _FakeStrategy:
    def reduce_boolean_decision(self, decision, all=True):
        return decision


class _FakeModule:
    global_step = 7
    trainer = type("T", (), {"strategy": _FakeStrategy()})()

    def log(self, *args, **kwargs):
        pass


def test_nonfinite_losses_are_skipped_counted_and_stop_when_repeated():
    guard = NonFiniteLossGuard(max_consecutive=3)
    module = _FakeModule()
    assert guard.ok(torch.tensor(1.0), module)
    assert not guard.ok(torch.tensor(float("nan")), module)
    assert not guard.ok(torch.tensor(float("inf")), module)
    assert guard.ok(torch.tensor(0.5), module) and guard.skipped == 2
    guard.ok(torch.tensor(float("nan")), module)
    guard.ok(torch.tensor(float("nan")), module)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        guard.ok(torch.tensor(float("nan")), module)
