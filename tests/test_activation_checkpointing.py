"""`activation_checkpointing=true` (recompute each encoder block in the backward instead of
keeping its activations) changes memory, never results: in fp32 the gradients, and a whole
`sam-train stage=sam` run, are bit-identical with and without it, for full fine-tuning and
for LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SAM_TINY, compose_train, randomise, tiny_sam_arch, train_in_process

from sam_train.cli.train import apply_model_options
from sam_train.config_checks import ConfigError, check_config
from sam_train.lit.sam_model import trainable_sam
from sam_train.models.lora import LoraConfig

LORA = LoraConfig(targets=["attn.qkv"], rank=4, alpha=4.0, dropout=0.1)


def encoder_gradients(
    checkpointing: bool | int, peft: LoraConfig | None
) -> dict[str, torch.Tensor]:
    """Gradients of every trainable tensor after one encoder backward, stochastic depth and
    adapter dropout on (the recomputation must replay the same random draws)."""
    torch.manual_seed(0)
    arch = tiny_sam_arch() | {"encoder_depth": 3, "encoder_global_attn_indexes": (2,)}
    sam = randomise(trainable_sam(**arch, drop_path_rate=0.3, peft=peft))
    encoder = sam.image_encoder.train()
    encoder.grad_checkpointing = checkpointing
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    target = torch.randn(2, 32, 4, 4)  # [B, prompt width, 64/16, 64/16]
    ((encoder(images) - target) ** 2).mean().backward()
    return {n: p.grad for n, p in encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("every", [True, 2], ids=["every_block", "every_2nd_block"])
@pytest.mark.parametrize("peft", [None, LORA], ids=["full", "lora"])
def test_checkpointed_blocks_give_bit_identical_gradients(peft, every):
    stored = encoder_gradients(False, peft)
    recomputed = encoder_gradients(every, peft)
    assert stored.keys() == recomputed.keys()
    assert any("blocks.0." in n for n in stored)  # gradients reach the first block
    if peft is not None:
        assert all("lora_" in n for n in stored if n.startswith("blocks."))
    for name, grad in stored.items():
        assert grad is not None and torch.equal(grad, recomputed[name]), name


def test_option_reaches_the_sam_encoder_with_adapters(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["stage=sam", *SAM_TINY, "peft=lora"], tmp_path)
    cfg.activation_checkpointing = True
    model = instantiate(cfg.model)
    apply_model_options(model, cfg)
    assert model.image_encoder.grad_checkpointing


@pytest.mark.parametrize("every, recomputed", [(True, [0, 1, 2]), (2, [0, 2]), (False, [])])
def test_every_nth_block_is_recomputed(monkeypatch, every, recomputed):
    arch = tiny_sam_arch() | {"encoder_depth": 3, "encoder_global_attn_indexes": (2,)}
    encoder = trainable_sam(**arch).image_encoder.train()
    encoder.grad_checkpointing = every
    seen = []
    real = torch.utils.checkpoint.checkpoint

    def recording(block, *args, **kwargs):
        seen.append(list(encoder.blocks).index(block))
        return real(block, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", recording)
    encoder(torch.randn(1, 3, 64, 64)).sum().backward()
    assert seen == recomputed
    seen.clear()
    encoder.eval()(torch.randn(1, 3, 64, 64))  # inference never recomputes
    assert seen == []


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5"])
def test_a_bad_activation_checkpointing_value_is_one_config_error(tmp_path, value):
    cfg = compose_train(["stage=sam", *SAM_TINY, f"activation_checkpointing={value}"], tmp_path)
    with pytest.raises(ConfigError, match=f"activation_checkpointing={value}: give true"):
        check_config(cfg)


def trained_state(run_dir: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    train_in_process(overrides, run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 2  # optimiser steps were taken
    return ckpt["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["none", "lora"])
def test_stage2_run_ends_bit_identical_with_activation_checkpointing(tmp_path, peft):
    args = ["stage=sam", *SAM_TINY, f"peft={peft}", "model.drop_path_rate=0.2"]
    plain = trained_state(tmp_path / "plain", args)
    recomputed = trained_state(tmp_path / "ckpt", [*args, "activation_checkpointing=true"])
    assert plain.keys() == recomputed.keys()
    for key, value in plain.items():
        assert torch.equal(value, recomputed[key]), key
