"""Hugging Face folders: `sam-export CKPT --format hf --out DIR` and reading such folders back.

A stage-2 (SAM) checkpoint -> a folder `transformers.SamModel.from_pretrained(DIR)` loads
(config.json, model.safetensors, preprocessor_config.json for `SamProcessor` and the
`mask-generation` pipeline); a stage-1 (MAE) checkpoint -> a folder `ViTMAEForPreTraining` and
`ViTMAEModel` load. `read_hf_folder` turns either (or one from the Hub) into our layout, so
`model.init_from=DIR`, `sam-export DIR ...` and `SamPredictor.from_checkpoint(DIR)` take them.

Writing needs `transformers` (the `hf` extra) for the config classes; reading needs only the
JSON config and safetensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from sam_train.weights.hf_keymap import mae_from_hf, sam_from_hf
from sam_train.weights.loaded import LoadedWeights, WeightsError

SAM_EPS = 1e-6  # LayerNorm eps of segment-anything's image encoder, neck and mask-prompt stack
MAE_EPS = 1e-6  # the official MAE's (transformers' ViTMAE default is 1e-12)


def import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise WeightsError("--format hf needs transformers: pip install 'sam_train[hf]'") from err
    return transformers


# ---------------------------------------------------------------------------------------------
# configs: our architecture <-> transformers'


def sam_hf_config(arch: dict, state: dict[str, torch.Tensor]) -> dict:
    """`SamConfig` arguments for our `build_sam` architecture."""
    if arch.get("text_embed_dim"):
        raise WeightsError(
            "this SAM has a text-prompt branch, which transformers' SamModel cannot hold; "
            "export it with --format sam or safetensors"
        )
    mlp_dim = state["image_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    dim = arch["prompt_embed_dim"]
    return dict(
        vision_config=dict(
            hidden_size=arch["encoder_embed_dim"],
            num_hidden_layers=arch["encoder_depth"],
            num_attention_heads=arch["encoder_num_heads"],
            global_attn_indexes=list(arch["encoder_global_attn_indexes"]),
            image_size=arch["image_size"],
            patch_size=arch["patch_size"],
            window_size=arch["window_size"],
            use_rel_pos=arch.get("use_rel_pos", True),
            output_channels=dim,
            mlp_dim=mlp_dim,
            mlp_ratio=mlp_dim / arch["encoder_embed_dim"],
            num_pos_feats=dim // 2,
            layer_norm_eps=SAM_EPS,
        ),
        prompt_encoder_config=dict(
            hidden_size=dim,
            image_size=arch["image_size"],
            patch_size=arch["patch_size"],
            mask_input_channels=arch.get("mask_in_chans", 16),
            layer_norm_eps=SAM_EPS,
        ),
        mask_decoder_config=dict(
            hidden_size=dim,
            mlp_dim=arch.get("decoder_mlp_dim", 2048),
            num_hidden_layers=arch.get("decoder_depth", 2),
            num_attention_heads=arch.get("decoder_num_heads", 8),
            iou_head_depth=3,
            iou_head_hidden_dim=arch.get("iou_head_hidden_dim", 256),
            layer_norm_eps=SAM_EPS,
        ),
    )


def sam_arch_from_hf(config: dict) -> dict:
    """Our `build_sam` arguments from a `SamConfig` dict (config.json)."""
    v, p, d = (
        config["vision_config"],
        config["prompt_encoder_config"],
        config["mask_decoder_config"],
    )
    return dict(
        encoder_embed_dim=v["hidden_size"],
        encoder_depth=v["num_hidden_layers"],
        encoder_num_heads=v["num_attention_heads"],
        encoder_global_attn_indexes=list(v["global_attn_indexes"]),
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        window_size=v["window_size"],
        use_rel_pos=v.get("use_rel_pos", True),
        prompt_embed_dim=p["hidden_size"],
        mask_in_chans=p.get("mask_input_channels", 16),
        decoder_depth=d.get("num_hidden_layers", 2),
        decoder_num_heads=d.get("num_attention_heads", 8),
        decoder_mlp_dim=d.get("mlp_dim", 2048),
        iou_head_hidden_dim=d.get("iou_head_hidden_dim", 256),
    )


def _mae_heads(metadata: dict, dim: int, key: str) -> int:
    """Head counts are not visible in shapes: the training config's, else ViT's 64 per head."""
    for source in (
        metadata.get("architecture") or {},
        (metadata.get("config") or {}).get("model") or {},
    ):
        if source.get(key):
            return int(source[key])
    return max(1, dim // 64)


def mae_hf_config(state: dict[str, torch.Tensor], metadata: dict) -> dict:
    """`ViTMAEConfig` arguments from our MAE state dict (+ the training config for heads)."""
    proj = state["encoder.patch_embed.proj.weight"]  # [D, C, p, p]
    dim, chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = round((state["encoder.pos_embed"].shape[1] - 1) ** 0.5)
    dec_dim = state["decoder_embed.weight"].shape[0]
    model_cfg = (metadata.get("config") or {}).get("model") or {}
    return dict(
        hidden_size=dim,
        num_hidden_layers=_count(state, r"encoder\.blocks\.(\d+)\."),
        num_attention_heads=_mae_heads(metadata, dim, "num_heads"),
        intermediate_size=state["encoder.blocks.0.mlp.fc1.weight"].shape[0],
        image_size=grid * patch,
        patch_size=patch,
        num_channels=chans,
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=MAE_EPS,
        decoder_hidden_size=dec_dim,
        decoder_num_hidden_layers=_count(state, r"decoder_blocks\.(\d+)\."),
        decoder_num_attention_heads=_mae_heads(metadata, dec_dim, "decoder_num_heads"),
        decoder_intermediate_size=state["decoder_blocks.0.mlp.fc1.weight"].shape[0],
        mask_ratio=float(model_cfg.get("mask_ratio", 0.75)),
        norm_pix_loss=bool(model_cfg.get("norm_pix_loss", False)),
    )


def mae_arch_from_hf(config: dict) -> dict:
    """Our `MaskedAutoencoder` arguments from a `ViTMAEConfig` dict."""
    return dict(
        img_size=config["image_size"],
        patch_size=config["patch_size"],
        in_chans=config.get("num_channels", 3),
        embed_dim=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        decoder_embed_dim=config.get("decoder_hidden_size", 512),
        decoder_depth=config.get("decoder_num_hidden_layers", 8),
        decoder_num_heads=config.get("decoder_num_attention_heads", 16),
        mlp_ratio=config["intermediate_size"] / config["hidden_size"],
        norm_pix_loss=config.get("norm_pix_loss", False),
        mask_ratio=config.get("mask_ratio", 0.75),
    )


def _count(state: dict, pattern: str) -> int:
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(pattern, k)))


# ---------------------------------------------------------------------------------------------
# export


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_folder(path: str | Path) -> LoadedWeights:
    """A transformers SamModel / ViTMAE folder as our layout (`sam_train_sam` / `sam_train_mae`),
    with the `architecture` our builders take."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(
            f"{path} has a config.json but no .safetensors weights (a pytorch_model.bin "
            "folder? re-save it with save_pretrained(safe_serialization=True))"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    model_type = config.get("model_type")
    if model_type == "sam":
        sd, layout, arch = sam_from_hf(state), "sam_train_sam", sam_arch_from_hf(config)
    elif model_type == "vit_mae":
        sd, layout, arch = mae_from_hf(state), "sam_train_mae", mae_arch_from_hf(config)
        if not any(k.startswith("decoder_") for k in sd):
            layout = "vit"  # a ViTMAEModel folder: the encoder alone
            sd = {k.removeprefix("encoder."): v for k, v in sd.items()}
    else:
        raise WeightsError(
            f"{path} is a transformers {model_type!r} folder; sam_train reads 'sam' "
            "(SamModel) and 'vit_mae' (ViTMAEModel / ViTMAEForPreTraining) folders"
        )
    meta = {"architecture": arch, "source_format": "hf", "hf_model_type": model_type}
    return LoadedWeights(sd, layout, meta, path)
