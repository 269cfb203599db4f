"""Fine-tuning a MobileSAM-family model: `model=lite_medsam` composes and loads
lite_medsam.pth; LoRA (in TinyViT's window attention) and `model.freeze` train only what they
say, frozen batch norms keep their statistics; `sam-train` runs a few steps end to end (tiny
sizes) and its exports and adapter read back."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lite_medsam_helpers import lite_medsam_path, randomise_

from sam_train.models.sam.sam import build_tiny_vit_sam
from sam_train.weights.sam_loading import load_sam


def composed_model(*overrides: str):
    with initialize_config_module("sam_train.conf", version_base=None):
        cfg = compose("train", overrides=["stage=sam", "model=lite_medsam", *overrides])
    return cfg, instantiate(cfg.model)


def _step(sam) -> None:
    """One optimiser step on a box prompt of a random image (training mode)."""
    sam.train()
    opt = torch.optim.SGD([p for p in sam.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    logits, iou = sam(x, boxes=torch.tensor([[40.0, 50.0, 150.0, 170.0]]), multimask_output=False)
    (logits.sigmoid().mean() + iou.mean()).backward()
    opt.step()


def _frozen_unchanged(before: dict, after: dict, trainable: set[str]) -> list[str]:
    """Names of tensors outside `trainable` that changed (batch-norm statistics included)."""
    return [k for k, v in before.items() if k not in trainable and not torch.equal(v, after[k])]


def test_lora_on_lite_medsam_trains_adapters_and_decoder_only():
    cfg, sam = composed_model(
        f"model.init_from={lite_medsam_path()}", "peft=lora", "model.freeze=[prompt_encoder]"
    )
    assert cfg.data.pixel_norm == "min_max" and cfg.data.img_size == 256
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if n.startswith("image_encoder.")}
    assert adapters and all(n.endswith((".attn.qkv.lora_A", ".attn.qkv.lora_B")) for n in adapters)
    assert len(adapters) == 2 * 10  # one adapter per attention block (2 + 6 + 2)
    assert trainable - adapters == {
        n for n, _ in sam.named_parameters() if n.startswith("mask_decoder.")
    }
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    _step(sam)
    bns = [m for m in sam.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # frozen: running statistics kept
    after = sam.state_dict()
    assert _frozen_unchanged(before, after, trainable) == []
    assert not torch.equal(
        before["mask_decoder.iou_token.weight"], after["mask_decoder.iou_token.weight"]
    )


def test_freezing_the_encoder_keeps_its_batch_norm_statistics():
    _, sam = composed_model(f"model.init_from={lite_medsam_path()}", "model.freeze=[image_encoder]")
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("image_encoder.") for n in trainable)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    _step(sam)
    assert _frozen_unchanged(before, sam.state_dict(), trainable) == []


def test_full_fine_tuning_updates_batch_norm_statistics():
    """The other side of the two tests above: a trainable encoder's batch norms learn."""
    _, sam = composed_model(f"model.init_from={lite_medsam_path()}")
    key = "image_encoder.patch_embed.seq.0.bn.running_mean"
    before = sam.state_dict()[key].clone()
    _step(sam)
    assert not torch.equal(before, sam.state_dict()[key])


TINY = [
    "model.embed_dims=[8,16,16,32]",
    "model.depths=[1,1,1,1]",
    "model.num_heads=[1,1,1,2]",
    "model.window_sizes=[4,4,4,4]",
    "model.image_size=64",
    "model.prompt_embed_dim=32",
    "model.decoder_mlp_dim=64",
    "model.decoder_num_heads=4",
    "model.iou_head_hidden_dim=32",
    "stage.module.max_masks_per_image=4",
    "stage.module.val_max_masks=4",
    "stage.module.val_max_clicks=2",
    "stage.module.interactive.num_click_rounds=1",
    "data.samples_per_epoch=4",
    "trainer.max_epochs=1",
    "callbacks.progress_bar.refresh_rate=0",
]


def test_sam_train_fine_tunes_a_mobile_sam_layout_file_with_lora(tmp_path):
    """A tiny LiteMedSAM-geometry SAM saved as a plain MobileSAM-layout state dict (no
    metadata), fine-tuned with `model=lite_medsam peft=lora`; the run's export reads back as a
    min-max TinyViT SAM and its adapter applies to that base only."""
    base = tmp_path / "tiny_lite_medsam.pth"
    torch.manual_seed(0)
    tiny = build_tiny_vit_sam(
        image_size=64,
        stem_stride=1,
        embed_dims=(8, 16, 16, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 2),
        window_sizes=(4, 4, 4, 4),
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=32,
    )
    torch.save(randomise_(tiny, seed=1).state_dict(), base)
    res = run_cli(
        "sam-train",
        "stage=sam",
        "model=lite_medsam",
        *TINY,
        f"model.init_from={base}",
        "peft=lora",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "LoRA rank 4, alpha 4 on 3 layers (attn.qkv)" in res.stdout
    exported = load_sam(tmp_path / "run" / "export" / "sam.safetensors")
    assert exported.pixel_norm == "min_max" and exported.image_encoder.img_size == 64
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    res = run_cli(
        "sam-export", ckpt, "--format", "adapter", "--out", tmp_path / "a.safetensors", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    from sam_train.weights.adapters import load_sam_with_adapter
    from sam_train.weights.checkpoints import WeightsError

    adapted = load_sam_with_adapter(base, tmp_path / "a.safetensors")
    trained = load_sam(ckpt)
    for k, v in trained.state_dict().items():
        assert torch.allclose(v.float(), adapted.state_dict()[k].float(), atol=1e-6), k
    with pytest.raises(WeightsError, match="sha256"):
        load_sam_with_adapter(lite_medsam_path(), tmp_path / "a.safetensors")


def test_layer_decay_numbers_tiny_vit_blocks_across_stages():
    sam = build_tiny_vit_sam(
        image_size=64,
        stem_stride=1,
        embed_dims=(8, 16, 16, 32),
        depths=(1, 2, 1, 1),
        num_heads=(1, 1, 1, 2),
    )
    enc = sam.image_encoder
    assert enc.layer_id("patch_embed.seq.0.c.weight") == 0
    assert enc.layer_id("layers.0.blocks.0.conv1.c.weight") == 1
    assert enc.layer_id("layers.1.blocks.1.attn.qkv.weight") == 3
    assert enc.layer_id("layers.1.downsample.conv1.c.weight") == 3  # with its stage's last block
    assert enc.layer_id("layers.3.blocks.0.mlp.fc1.weight") == 5 == enc.depth
    assert enc.layer_id("neck.0.weight") == enc.depth + 1
    assert "image_encoder.layers.1.blocks.0.attn.attention_biases" in sam.no_weight_decay()
