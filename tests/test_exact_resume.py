"""Exact resume of every stage: `sam-train` killed with SIGKILL mid-epoch, between epochs and
inside validation, then started again in its run folder (auto resume), ends with the weights,
the optimiser state (exp_avg, exp_avg_sq, step) and the lr schedule of the uninterrupted run,
bit for bit; its metrics.csv holds the uninterrupted run's rows, each once; the run's
`.hydra/config.yaml` stays as the run was started.

Each run: 2 epochs of 2 steps, last.ckpt after every step. The default suite kills each stage
mid-epoch in its second epoch: that checkpoint is only matched when the epoch counter (which
epoch's data order), the position inside the epoch (which batches are left), the step counters
(masks and prompts are drawn from them) and the optimiser and schedule all come back, so it
covers what the two other points test; those run with SAM_TRAIN_LONG_TESTS=1.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
from conftest import console_script, cpu_trainer, tiny_sam, tree_pythonpath
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sam_train.config_checks import resume_changes
from sam_train.lit.run_callbacks import BestCheckpoint, StepCheckpoint
from sam_train.weights.safetensors_io import load_weights, save_weights

EVERY_RUN = [
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "callbacks.last_checkpoint.every_n_train_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]
MAE_TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=32",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "data.batch_size=4",
    "data.samples_per_epoch=8",  # 2 steps an epoch
    "data.val_photos=[chelsea]",
]
SAM_TINY = [
    "model.encoder_embed_dim=16",
    "model.encoder_depth=2",
    "model.encoder_num_heads=2",
    "model.encoder_global_attn_indexes=[1]",
    "model.image_size=32",
    "model.patch_size=8",
    "model.window_size=2",
    "stage.module.max_masks_per_image=4",
    "stage.module.val_max_masks=4",
    "stage.module.val_max_clicks=2",
    "stage.module.interactive.num_click_rounds=1",
    "data.samples_per_epoch=4",  # batch 2: 2 steps an epoch
]
STAGES = {
    "mae": ["stage=mae", *MAE_TINY],
    "sami": ["stage=sami", *MAE_TINY],
    "sam": [
        "stage=sam",
        *SAM_TINY,
        "model.prompt_embed_dim=32",
        "model.decoder_mlp_dim=64",
        "model.iou_head_hidden_dim=32",
    ],
    # the decoder phase starts in the second epoch, after the kills between epochs and in
    # validation and at the mid-epoch one: a resumed run must be in the phase it left
    "distill": [
        "stage=distill",
        *SAM_TINY,
        "stage.module.decoder_phase_start=3",
        "stage.module.mask_targets=teacher",
    ],
}
KILLS = {
    # step 3 = one batch into the second epoch
    "mid_epoch": ["+callbacks.kill._target_=run_helpers.SigkillAtStep", "+callbacks.kill.step=3"],
    # the first epoch, its validation and its checkpoint done; the second not begun
    "epoch_boundary": [
        "+callbacks.kill._target_=run_helpers.SigkillAtEpochStart",
        "+callbacks.kill.epoch=1",
    ],
    # inside the first epoch's validation: last.ckpt is the one of the step before the
    # epoch's last (the last step's waits for the validation's end)
    "validation": [
        "+callbacks.kill._target_=run_helpers.SigkillInValidation",
        "+callbacks.kill.epoch=0",
    ],
}
# what metrics.csv must hold as the uninterrupted run does (the throughput monitor's timings
# and counters are per process)
COMPARED_METRICS = (
    "train/loss",
    "train/mask_",
    "train/masks_per_image",
    "train/iou_",
    "val/",
    "lr-",
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny SAM teacher (width 32, 64 px / 16 = 4 x 4 embeddings) saved as our export."""
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return path


def sam_train_command(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": tree_pythonpath(), "OMP_NUM_THREADS": "1"}
    return {"args": [console_script("sam-train"), *args], "env": env}


def sam_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = sam_train_command(args)
    return subprocess.run(
        command["args"], cwd=cwd, env=command["env"], capture_output=True, text=True, timeout=600
    )


def stage_args(stage: str, teacher: Path) -> list[str]:
    extra = [f"model.teacher={teacher}"] if stage in ("sami", "distill") else []
    return [*STAGES[stage], *extra, *EVERY_RUN]


class StraightRun:
    """The uninterrupted run of a stage, shared by its three kills; it runs beside the first
    kill and resume (a second core), and is waited for when first compared."""

    runs: ClassVar[dict[str, StraightRun]] = {}

    def __init__(self, stage: str, teacher: Path, root: Path) -> None:
        self.folder, self.log = root / "run", root / "output.txt"
        command = sam_train_command([*stage_args(stage, teacher), f"hydra.run.dir={self.folder}"])
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command["args"], cwd=root, env=command["env"], stdout=log, stderr=log
            )

    @classmethod
    def of(cls, stage: str, teacher: Path, tmp_path_factory) -> StraightRun:
        if stage not in cls.runs:
            cls.runs[stage] = cls(stage, teacher, tmp_path_factory.mktemp(f"straight_{stage}"))
        return cls.runs[stage]

    def finished(self) -> Path:
        returncode = self.process.wait(timeout=600)
        assert returncode == 0, self.log.read_text()[-3000:]
        return self.folder


@pytest.fixture(scope="module", autouse=True)
def no_straight_run_left():
    """A straight run still going when the module ends (a failed test never waited for it) is
    stopped."""
    yield
    for run in StraightRun.runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
    StraightRun.runs.clear()


def last_checkpoint(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint parts differ (tensors bit for bit, everything else by ==)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))[:5]}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}/{i}")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape == b.shape and torch.equal(a, b):
            return []
        gap = (a.float() - b.float()).abs().max().item() if a.shape == b.shape else a.shape
        return [f"{where}: {gap}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def checkpoint_scores(ckpt: dict[str, Any]) -> dict[str, tuple]:
    """What each checkpoint callback keeps of the monitored metric: the best score and the
    file names and scores of the kept checkpoints (the folders differ between two runs)."""
    return {
        name: (
            None if state["best_model_score"] is None else float(state["best_model_score"]),
            Path(state["best_model_path"]).name,
            sorted((Path(k).name, float(v)) for k, v in state["best_k_models"].items()),
        )
        for name, state in ckpt["callbacks"].items()
        if "best_model_score" in state
    }


def logged_rows(run: Path) -> list[tuple]:
    """The compared metrics of metrics.csv: one (step, epoch, name, value) per logged value."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(
        (r["step"], r.get("epoch", ""), name, value)
        for r in rows
        for name, value in r.items()
        if value and name.startswith(COMPARED_METRICS)
    )


def check_kill_and_resume(stage: str, kill: str, teacher: Path, tmp_path, tmp_path_factory):
    straight_run = StraightRun.of(stage, teacher, tmp_path_factory)
    args = stage_args(stage, teacher)
    killed = tmp_path / "killed"
    res = sam_train([*args, *KILLS[kill], f"hydra.run.dir={killed}"], tmp_path)
    assert res.returncode == -9, f"the run was meant to die by SIGKILL: {res.stderr[-2000:]}"
    at_kill = last_checkpoint(killed)["global_step"]
    assert at_kill == {"mid_epoch": 3, "epoch_boundary": 2, "validation": 1}[kill], at_kill
    started = (killed / ".hydra" / "config.yaml").read_text()

    res = sam_train([*args, f"hydra.run.dir={killed}"], tmp_path)  # same folder: auto resume
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout and "this resume changes" not in res.stdout

    straight = straight_run.finished()
    a, b = last_checkpoint(straight), last_checkpoint(killed)
    assert a["global_step"] == b["global_step"] == 4
    for part in ("state_dict", "optimizer_states", "lr_schedulers"):
        diff = differences(a[part], b[part], part)
        assert not diff, f"{stage} killed at {kill}: {len(diff)} differ, e.g. {diff[:4]}"
    assert checkpoint_scores(b) == checkpoint_scores(a), "the best checkpoint differs"
    if stage == "distill":  # the decoder phase ran: the copied decoder moved from the teacher's
        first, _ = load_weights(teacher)
        decoder = [k for k in a["state_dict"] if k.startswith("model.mask_decoder.")]
        assert any(not torch.equal(a["state_dict"][k], first[k[len("model.") :]]) for k in decoder)
    moments = [s for opt in b["optimizer_states"] for s in opt["state"].values()]
    assert moments and all({"exp_avg", "exp_avg_sq", "step"} <= s.keys() for s in moments)

    rows = logged_rows(killed)
    assert rows == logged_rows(straight), "metrics.csv differs from the uninterrupted run's"
    assert len({r[::2] for r in rows}) == len(rows), "a metric logged twice at one step"
    assert (killed / ".hydra" / "config.yaml").read_text() == started
    assert list((killed / ".hydra").glob("resume-*/config.yaml")), "the resume's own config"


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_mid_epoch_resumes_to_the_uninterrupted_state(
    stage, teacher, tmp_path, tmp_path_factory
):
    check_kill_and_resume(stage, "mid_epoch", teacher, tmp_path, tmp_path_factory)


@pytest.mark.long
@pytest.mark.parametrize("kill", ["epoch_boundary", "validation"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_between_epochs_or_in_validation_resumes_to_the_uninterrupted_state(
    stage, kill, teacher, tmp_path, tmp_path_factory
):
    check_kill_and_resume(stage, kill, teacher, tmp_path, tmp_path_factory)


def test_a_resume_that_changes_what_the_run_is_says_which_options_in_one_line(tmp_path):
    def composed(*overrides: str):
        with initialize_config_module("sam_train.conf", version_base="1.3"):
            args = ["stage=mae", *MAE_TINY, *overrides, f"paths.run_dir={tmp_path}"]
            return compose("train", overrides=args)

    started = composed()
    ckpt = tmp_path / "last.ckpt"
    record = {"stage": "mae", "config": OmegaConf.to_container(started, resolve=True)}
    torch.save({"state_dict": {}, "sam_train": record}, ckpt)
    assert resume_changes(str(ckpt), started) == []
    # longer training, another device or loader option: the same run, continued
    same_run = composed("trainer.max_epochs=5", "data.pin_memory=true", "optim.lr=1e-3")
    assert resume_changes(str(ckpt), same_run) == []
    other = composed("data.batch_size=2", "model.mask_ratio=0.5", "seed=3")
    ratio = started.model.mask_ratio
    assert resume_changes(str(ckpt), other) == [
        "data.batch_size (4 -> 2)",
        "data.seed (0 -> 3)",
        f"model.mask_ratio ({ratio!r} -> 0.5)",
        "seed (0 -> 3)",
        "stage.module.seed (0 -> 3)",
    ]
    torch.save({"state_dict": {}}, ckpt)  # a checkpoint that records no config: nothing said
    assert resume_changes(str(ckpt), other) == []


# ----------------------------------------------------------------------------- step checkpoints
class _Validated(L.LightningModule):
    """One weight; records the epochs it validated; logs `score` = the epoch number."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.validated: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.w - batch) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("score", float(self.current_epoch))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _FailInValidation(L.Callback):
    def on_validation_batch_start(self, trainer, *args) -> None:
        if not trainer.sanity_checking:
            raise RuntimeError("stopped inside validation")


def _fit(folder: Path, *callbacks: L.Callback, ckpt_path: Path | None = None) -> _Validated:
    from torch.utils.data import DataLoader

    best = BestCheckpoint(dirpath=folder, monitor="score", mode="max", save_top_k=1)
    last = StepCheckpoint(dirpath=folder, save_top_k=0, save_last=True, every_n_train_steps=1)
    module = _Validated()
    data = DataLoader(torch.arange(4.0).unsqueeze(1), batch_size=2)  # 2 steps an epoch
    trainer = cpu_trainer(
        max_epochs=2, enable_checkpointing=True, callbacks=[best, last, *callbacks]
    )
    trainer.fit(module, data, data, ckpt_path=ckpt_path)
    return module


def test_a_step_checkpoint_that_validation_follows_is_written_after_it(tmp_path):
    module = _fit(tmp_path / "a")
    assert module.validated == [0, 1]
    last = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    (best,) = [v for k, v in checkpoint_scores(last).items() if k.startswith("BestCheckpoint")]
    assert best[:2] == (1.0, "epoch=1-step=4.ckpt")  # the last validation's outcome is in it

    with pytest.raises(RuntimeError, match="inside validation"):
        _fit(tmp_path / "b", _FailInValidation())
    # the epoch's last step waited for the validation: last.ckpt is the step before
    assert torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["global_step"] == 1
    resumed = _fit(tmp_path / "b", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert resumed.validated == [0, 1]  # the interrupted validation runs again
