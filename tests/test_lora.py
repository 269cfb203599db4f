"""LoRA adapters and freezing: the maths against Hugging Face peft, targets by pattern, what
trains, what the optimiser holds, merging."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import randomise, tiny_sam, tiny_sam_arch

from sam_train.lit.optim import OptimConfig
from sam_train.lit.sam_model import trainable_sam
from sam_train.lit.sam_module import SamModule
from sam_train.models.lora import (
    LoraConfig,
    LoraError,
    LoraLinear,
    add_lora,
    count_parameters,
    merge_lora,
    merge_lora_state,
)
from sam_train.training.freezing import FreezeError, freeze_parts

TINY = tiny_sam_arch()
QKV = LoraConfig(targets=["attn.qkv"], rank=4, alpha=8.0)


def test_adapted_encoder_matches_peft_on_the_same_weights():
    peft = pytest.importorskip("peft")
    ours = tiny_sam().image_encoder
    theirs = copy.deepcopy(ours)
    add_lora(ours, QKV)
    randomise(ours)
    base = {k: v for k, v in ours.state_dict().items() if "lora_" not in k}
    theirs.load_state_dict(base)
    theirs = peft.inject_adapter_in_model(
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["attn.qkv"]), theirs
    )
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoraLinear):
                wrapped = theirs.get_submodule(name)
                wrapped.lora_A["default"].weight.copy_(module.lora_A)
                wrapped.lora_B["default"].weight.copy_(module.lora_B)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    # peft renames the base weights; ours keep the official names
    assert "blocks.0.attn.qkv.base_layer.weight" in theirs.state_dict()
    assert "blocks.0.attn.qkv.weight" in ours.state_dict()


def test_state_dict_is_the_base_layout_plus_three_keys_per_adapted_layer():
    sam = tiny_sam()
    base_keys = set(sam.state_dict())
    adapted = add_lora(sam, QKV)
    assert adapted == ["image_encoder.blocks.0.attn.qkv", "image_encoder.blocks.1.attn.qkv"]
    extra = set(sam.state_dict()) - base_keys
    assert extra == {f"{n}.{s}" for n in adapted for s in ("lora_A", "lora_B", "lora_scale")}
    assert base_keys <= set(sam.state_dict())


def test_patterns_with_wildcards_reach_the_mask_decoder():
    sam = tiny_sam()
    cfg = LoraConfig(
        targets=["mask_decoder.transformer.layers.*.self_attn.q_proj"], rank=2, alpha=2
    )
    adapted = add_lora(sam, cfg)
    assert adapted == [f"mask_decoder.transformer.layers.{i}.self_attn.q_proj" for i in (0, 1)]


def test_a_pattern_that_matches_nothing_names_itself_and_what_fits():
    with pytest.raises(LoraError, match=r"'attn\.qvk'.*attn\.qkv.*mlp\.fc1"):
        add_lora(tiny_sam(), LoraConfig(targets=["attn.qvk"], rank=2, alpha=2))


def test_merged_model_and_merged_state_compute_the_adapted_function():
    sam = tiny_sam()
    add_lora(sam, QKV)
    randomise(sam).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        adapted = sam.embed_images(x)
        plain = tiny_sam()
        plain.load_state_dict(merge_lora_state(sam.state_dict()), strict=True)
        assert torch.allclose(plain.eval().embed_images(x), adapted, atol=1e-5)
        merge_lora(sam)
        assert not any(isinstance(m, LoraLinear) for m in sam.modules())
        assert torch.allclose(sam.embed_images(x), adapted, atol=1e-5)


def test_freeze_names_any_part_and_refuses_a_name_that_is_not_there():
    sam = tiny_sam()
    freeze_parts(sam, ["image_encoder", "mask_decoder.transformer"])
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("image_encoder.", "mask_decoder.transformer.")) for n in trainable)
    assert "mask_decoder.iou_token.weight" in trainable
    assert "prompt_encoder.no_mask_embed.weight" in trainable
    with pytest.raises(FreezeError, match=r"'mask_decoder\.transfomer'.*mask_decoder\.transformer"):
        freeze_parts(sam, ["mask_decoder.transfomer"])


def test_freeze_keeps_trainable_what_init_from_did_not_provide():
    sam = tiny_sam()
    provided = {k for k in sam.state_dict() if k.startswith("image_encoder.blocks.")}
    kept = freeze_parts(sam, ["image_encoder"], provided)
    assert "image_encoder.neck.0.weight" in kept
    assert sam.image_encoder.neck[0].weight.requires_grad
    assert not sam.image_encoder.blocks[0].attn.qkv.weight.requires_grad


def test_lora_trains_only_adapters_in_the_encoder_and_the_optimiser_holds_only_trainables(
    caplog,
):
    with caplog.at_level(logging.INFO, logger="sam_train.lit.sam_model"):
        sam = trainable_sam(peft=QKV, **TINY)
    freeze_parts(sam, ["prompt_encoder"])  # the mask-prompt path gets no gradient below
    assert "trainable parameters:" in caplog.text and "LoRA rank 4" in caplog.text
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    assert encoder == {
        f"image_encoder.blocks.{i}.attn.qkv.lora_{ab}" for i in (0, 1) for ab in "AB"
    }
    assert any(n.startswith("mask_decoder.") for n in trainable)

    module = SamModule(sam, OptimConfig(lr=1e-3, layer_decay=0.8))
    module.optimizer_config = lambda groups: groups  # the groups AdamW is built from
    held = {id(p) for g in module.configure_optimizers() for p in g["params"]}
    assert held == {id(p) for p in sam.parameters() if p.requires_grad}

    randomise(sam)  # B != 0, so every adapter tensor gets a gradient
    emb = sam.embed_images(torch.randn(1, 3, 64, 64))
    logits, iou = sam.decode(emb, points=(torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1]])))
    (logits.mean() + iou.mean()).backward()
    for name, p in sam.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_trainable_count_of_lora_on_qkv_is_small():
    sam = trainable_sam(peft=QKV, **TINY)
    freeze_parts(sam, ["prompt_encoder", "mask_decoder"])
    trainable, total = count_parameters(sam)
    assert trainable == 2 * 4 * (32 + 96)  # two blocks x rank 4 x (in + out)
    assert trainable / total < 0.02
