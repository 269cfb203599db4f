"""`sam-train stage=mae` from the installed console script, resume, and bad input."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import MAE_TINY, call_main, compose_train, run_cli, sam_train_main

from sam_train.cli.train import train
from sam_train.weights.safetensors_io import load_weights

SAMPLE = ["data.samples_per_epoch=8"]


@pytest.mark.slow
def test_console_script_trains_exports_and_resumes(tmp_path):
    run1 = tmp_path / "run1"
    res = run_cli(
        "sam-train", "stage=mae", *MAE_TINY, *SAMPLE, "trainer.max_epochs=1",
        f"hydra.run.dir={run1}", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: {run1}" in res.stdout and "Results in" in res.stdout
    last = run1 / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 2
    tensors, meta = load_weights(run1 / "export" / "encoder.safetensors")
    assert "blocks.1.attn.qkv.weight" in tensors and meta["architecture"]["embed_dim"] == 32
    assert meta["stage"] == "mae" and meta["config"]["model"]["depth"] == 2
    assert (run1 / "reconstructions" / "final.png").stat().st_size > 0
    assert (run1 / "csv" / "metrics.csv").read_text().startswith("epoch")
    assert (run1 / ".hydra" / "config.yaml").is_file()

    run2 = tmp_path / "run2"
    res = run_cli(
        "sam-train", "stage=mae", *MAE_TINY, *SAMPLE, "trainer.max_epochs=2", f"ckpt_path={last}",
        f"hydra.run.dir={run2}", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = torch.load(run2 / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 4
    with open(run2 / "csv" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert steps and min(steps) >= 2, "the resumed run started again from step 0"


def test_wrong_key_and_unknown_model_are_reported_by_the_cli(tmp_path, capfd):
    res = call_main(
        sam_train_main, ["stage=mae", "model.mask_ration=0.5", f"hydra.run.dir={tmp_path}"], capfd
    )
    assert res.returncode != 0 and "mask_ration" in res.stderr
    res = call_main(sam_train_main, ["stage=mae", "model=mae_vit_giant"], capfd)
    assert res.returncode != 0
    assert "mae_vit_giant" in res.stderr and "mae_vit_base" in res.stderr  # lists the options


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.mask_ratio=1.5"], "mask_ratio must lie strictly between 0 and 1"),
        (["data=images"], "needs data.root"),
        (["data=images", "data.root=/no/such/folder"], "does not exist"),
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed on a CPU"),
        (["ckpt_path=/no/such.ckpt"], "does not exist"),
        (["optim.schedule=linear"], "optim.schedule must be"),
    ],
)
def test_bad_config_fails_before_training_with_a_clear_message(tmp_path, overrides, message):
    cfg = compose_train(["stage=mae", *MAE_TINY, *overrides], tmp_path)
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    cfg = compose_train(
        ["stage=mae", *MAE_TINY, "data=images", f"data.root={tmp_path / 'imgs'}"], tmp_path
    )
    with pytest.raises(Exception, match="no images"):
        train(cfg)


def test_activation_checkpointing_option_reaches_the_encoder(tmp_path):
    from hydra.utils import instantiate

    from sam_train.cli.train import apply_model_options

    cfg = compose_train(["stage=mae", *MAE_TINY, "activation_checkpointing=true"], tmp_path)
    model = instantiate(cfg.model)
    apply_model_options(model, cfg)
    assert model.encoder.grad_checkpointing
