"""Fine-tuning a released SAM with the tools, at tiny sizes: `sam-train peft=lora` from an
official-layout checkpoint, `sam-export --format adapter|sam`, `sam-predict --adapter`, and the
bad inputs that stop with exit code 2 (each in this process: the run composed and trained, the
other tools through their `main`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    SAM_TINY,
    call_main,
    run_output,
    sam_train_main,
    train_in_process,
    write_official_base,
)
from safetensors import safe_open

from sam_train.cli import export as export_cli
from sam_train.cli import predict as predict_cli
from sam_train.lit.sam_model import trainable_sam
from sam_train.models.lora import LoraConfig
from sam_train.predictor import SamPredictor, load_sam
from sam_train.weights.checkpoints import file_sha256, read_weights
from sam_train.weights.official import build_official_sam

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """`sam-train stage=sam peft=lora` from an official-layout base; 2 optimiser steps."""
    root = tmp_path_factory.mktemp("finetune")
    base = root / "base.pth"
    write_official_base(base)
    with run_output() as out:
        train_in_process(
            [
                "stage=sam",
                *SAM_TINY,
                f"model.init_from={base}",
                "peft=lora",
                "model.freeze=[prompt_encoder]",
                f"paths.cache_dir={root / 'cache'}",
            ],
            root / "run",
        )
    return root, base, root / "run" / "checkpoints" / "last.ckpt", out.getvalue()


def adapted_model(ckpt) -> torch.nn.Module:
    """The model as training left it: adapters unmerged, from the Lightning checkpoint."""
    weights = read_weights(ckpt)
    sam = trainable_sam(
        peft=LoraConfig(targets=["attn.qkv"], rank=4, alpha=4.0),
        **weights.metadata["architecture"],
    )
    sam.load_state_dict(weights.state_dict, strict=True)
    return sam.eval()


def test_lora_run_reports_counts_and_trains_only_adapters_and_the_decoder(lora_run):
    root, base, ckpt, stdout = lora_run
    assert "LoRA rank 4, alpha 4 on 2 layers (attn.qkv)" in stdout
    assert "trainable parameters:" in stdout
    sd = read_weights(ckpt).state_dict
    official = read_weights(base).state_dict  # names differ from ours only in mlp.lin1/2
    qkv = "image_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(sd[qkv], official[qkv])  # the base stays frozen
    assert torch.equal(
        sd["prompt_encoder.no_mask_embed.weight"], official["prompt_encoder.no_mask_embed.weight"]
    )
    assert sd["image_encoder.blocks.0.attn.qkv.lora_B"].abs().sum() > 0  # the adapter trained
    iou = "mask_decoder.iou_token.weight"
    assert not torch.equal(sd[iou], official[iou])  # the decoder trains in full


def test_merged_export_loads_strictly_into_segment_anything_and_equals_the_adapted_model(
    lora_run, capfd
):
    pytest.importorskip("segment_anything")
    root, _, ckpt, _ = lora_run
    out = root / "merged.pth"
    res = call_main(export_cli.main, [ckpt, "--format", "sam", "--out", out], capfd)
    assert res.returncode == 0, res.stderr
    arch = json.loads(out.with_suffix(".json").read_text())["architecture"]
    official = build_official_sam(arch)
    official.load_state_dict(torch.load(out, weights_only=True), strict=True)
    official.eval()
    ours = adapted_model(ckpt)
    x = torch.randn(1, 3, 64, 64)
    coords, labels = torch.tensor([[[20.0, 30.0], [40.0, 12.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        emb_ours, emb_theirs = ours.embed_images(x), official.image_encoder(x)
        assert torch.allclose(emb_ours, emb_theirs, atol=1e-5)
        logits_ours, iou_ours = ours.decode(emb_ours, points=(coords, labels))
        sparse, dense = official.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits_theirs, iou_theirs = official.mask_decoder(
            emb_theirs, official.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
    assert torch.allclose(logits_ours, logits_theirs, atol=1e-5)
    assert torch.allclose(iou_ours, iou_theirs, atol=1e-5)
    # the run's own export (export/sam.safetensors) is the merged model too
    exported = load_sam(root / "run" / "export" / "sam.safetensors")
    with torch.no_grad():
        assert torch.allclose(exported.embed_images(x), emb_ours, atol=1e-5)


def test_adapter_export_holds_only_what_the_run_changed_and_rebuilds_the_model_with_its_base(
    lora_run, capfd
):
    root, base, ckpt, _ = lora_run
    adapter = root / "lora.safetensors"
    res = call_main(export_cli.main, [ckpt, "--format", "adapter", "--out", adapter], capfd)
    assert res.returncode == 0, res.stderr
    with safe_open(adapter, "pt") as f:
        keys = set(f.keys())
    assert "image_encoder.blocks.1.attn.qkv.lora_A" in keys
    assert not any(k.startswith("prompt_encoder.") for k in keys)  # frozen: the base's
    assert not any(k.startswith("image_encoder.") and "lora_" not in k for k in keys)
    assert "mask_decoder.iou_token.weight" in keys
    adapter_meta = _metadata(adapter)
    assert adapter_meta["base_sha256"] == file_sha256(base)
    assert adapter_meta["base"] == str(base)
    assert (adapter_meta["rank"], adapter_meta["alpha"]) == (4, 4.0)
    assert adapter_meta["targets"] == ["attn.qkv"]
    assert adapter_meta["architecture"]["encoder_depth"] == 2

    rebuilt = SamPredictor.from_checkpoint(base, adapter=adapter).model
    ours = adapted_model(ckpt)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt.embed_images(x), ours.embed_images(x), atol=1e-5)

    image = root / "photo.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(
        image
    )
    res = call_main(
        predict_cli.main,
        [base, "--adapter", adapter, "--image", image, "--point", "20,20", "--out", root / "pred.png"],
        capfd,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (root / "pred.png").is_file()


def _metadata(path) -> dict:
    from sam_train.weights.safetensors_io import load_weights

    return load_weights(path)[1]


def test_an_adapter_with_a_base_of_another_hash_and_architecture_stops_with_exit_2(lora_run, capfd):
    root, _, ckpt, _ = lora_run
    adapter = root / "lora_for_bad_base.safetensors"
    assert (
        call_main(
            export_cli.main, [ckpt, "--format", "adapter", "--out", adapter], capfd
        ).returncode
        == 0
    )
    other = root / "other_base.pth"
    write_official_base(other, encoder_embed_dim=64, encoder_num_heads=4)
    res = call_main(predict_cli.main, [other, "--adapter", adapter, "--sample", "arc2017"], capfd)
    assert res.returncode == 2
    assert "sha256" in res.stderr and "base.pth" in res.stderr
    assert "width 64" in res.stderr and "needs width 32" in res.stderr
    assert "Traceback" not in res.stderr

    res = call_main(export_cli.main, [other, "--format", "adapter"], capfd)  # no adapters in it
    assert res.returncode == 2 and "peft=lora" in res.stderr and "--format sam" in res.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        ("peft.targets=[attn.qvk]", ["peft.targets", "'attn.qvk'", "attn.qkv"]),
        ("model.freeze=[mask_decoder.transfomer]", ["model.freeze", "mask_decoder.transformer"]),
    ],
)
def test_targets_or_freeze_naming_nothing_stop_with_exit_2(lora_run, override, expected, capfd):
    root, base, _, _ = lora_run
    args = [
        "stage=sam",
        *SAM_TINY,
        f"model.init_from={base}",
        "peft=lora",
        override,
        f"hydra.run.dir={root / 'bad'}",
        f"paths.cache_dir={root / 'cache'}",
    ]
    res = call_main(sam_train_main, args, capfd)
    assert res.returncode == 2, res.stderr[-2000:]
    for text in expected:
        assert text in res.stderr
    assert "Traceback" not in res.stderr
