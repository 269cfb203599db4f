"""Rename tables between our state dicts and the Hugging Face checkpoint layouts of `SamModel`
and `ViTMAEForPreTraining` (the names their published checkpoints use on disk, which every
transformers release loads).

SAM: our layout -> the official one (`sam_state_to_official`) -> HF: module paths renamed
(`image_encoder.blocks.N` -> `vision_encoder.layers.N`, `neck.0..3` -> `neck.conv1 /
layer_norm1 / conv2 / layer_norm2`, the mask-prompt stack and upscaling numbered children ->
named ones, 3-layer MLPs `layers.0/1/2` -> `proj_in / layers.0 / proj_out`); the random
positional-encoding matrix is held twice in HF (`shared_image_embedding`, and the prompt
encoder's tied copy).
MAE: our fused `qkv` is split into `query / key / value` rows (exact, so round trips are
bit-identical).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from sam_train.weights.keymaps import sam_state_from_official, sam_state_to_official

SAM_PE_KEYS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
_OFFICIAL_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# (official fragment, HF fragment), applied in order by plain replacement; the reverse map
# applies the same pairs swapped
_SAM_PAIRS: list[tuple[str, str]] = [
    ("image_encoder.blocks.", "vision_encoder.layers."),
    ("image_encoder.", "vision_encoder."),
    (".patch_embed.proj.", ".patch_embed.projection."),
    (".neck.0.", ".neck.conv1."),
    (".neck.1.", ".neck.layer_norm1."),
    (".neck.2.", ".neck.conv2."),
    (".neck.3.", ".neck.layer_norm2."),
    (".point_embeddings.", ".point_embed."),
    (".mask_downscaling.0.", ".mask_embed.conv1."),
    (".mask_downscaling.1.", ".mask_embed.layer_norm1."),
    (".mask_downscaling.3.", ".mask_embed.conv2."),
    (".mask_downscaling.4.", ".mask_embed.layer_norm2."),
    (".mask_downscaling.6.", ".mask_embed.conv3."),
    (".output_upscaling.0.", ".upscale_conv1."),
    (".output_upscaling.1.", ".upscale_layer_norm."),
    (".output_upscaling.3.", ".upscale_conv2."),
    (".norm_final_attn.", ".layer_norm_final_attn."),
    *[(f".norm{i}.", f".layer_norm{i}.") for i in range(1, 5)],  # encoder and decoder blocks
]
_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(.*)$")


def _mlp_to_hf(key: str, depth: int) -> str:
    """3-layer MLPs: `layers.0 .. layers.{depth-1}` -> `proj_in`, `layers.0..{depth-3}`, `proj_out`."""
    m = _MLP.match(key)
    if not m or not (layer := re.match(r"layers\.(\d+)\.(.*)$", m.group(2))):
        return key
    i = int(layer.group(1))
    name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
    return f"{m.group(1)}.{name}.{layer.group(2)}"


def _mlp_from_hf(key: str, depth: int) -> str:
    m = _MLP.match(key)
    if not m:
        return key
    part, rest = m.group(2).split(".", 1)
    if part == "layers":
        index, rest = rest.split(".", 1)
        return f"{m.group(1)}.layers.{int(index) + 1}.{rest}"
    return f"{m.group(1)}.layers.{0 if part == 'proj_in' else depth - 1}.{rest}"


def _replace_all(key: str, pairs: list[tuple[str, str]]) -> str:
    for a, b in pairs:
        key = key.replace(a, b)
    return key


def sam_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `Sam` state dict -> `SamModel`'s checkpoint layout."""
    official = sam_state_to_official(sd)
    depth = 1 + max(
        int(m.group(1))
        for k in official
        if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))
    )
    out = {}
    for key, value in official.items():
        if key == _OFFICIAL_PE:
            out.update({k: value.clone() for k in SAM_PE_KEYS})
        else:
            out[_mlp_to_hf(_replace_all(key, _SAM_PAIRS), depth)] = value
    return out


def sam_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`SamModel`'s checkpoint layout -> our `Sam` state dict."""
    hidden = [k for k in sd if k.startswith("mask_decoder.iou_prediction_head.layers.")]
    depth = 2 + len({k.split(".")[3] for k in hidden})  # proj_in + hidden layers + proj_out
    swapped = [(b, a) for a, b in _SAM_PAIRS]
    official = {}
    for key, value in sd.items():
        if key in SAM_PE_KEYS:
            official[_OFFICIAL_PE] = value
        else:
            official[_replace_all(_mlp_from_hf(key, depth), swapped)] = value
    return sam_state_from_official(official)


# ---------------------------------------------------------------------------------------------
# MAE

_MAE_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV = ("query", "key", "value")


def _block_to_hf(rest: str, value: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    module, param = rest.rsplit(".", 1)
    if module == "attn.qkv":
        return {
            f"{prefix}.attention.attention.{name}.{param}": part
            for name, part in zip(_QKV, value.chunk(3, dim=0))
        }
    return {f"{prefix}.{_MAE_BLOCK[module]}.{param}": value}


_MAE_SIMPLE = {
    "encoder.cls_token": "vit.embeddings.cls_token",
    "encoder.pos_embed": "vit.embeddings.position_embeddings",
    "encoder.patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "encoder.patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "encoder.norm.weight": "vit.layernorm.weight",
    "encoder.norm.bias": "vit.layernorm.bias",
}


def mae_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `MaskedAutoencoder` state dict -> `ViTMAEForPreTraining`'s checkpoint layout."""
    out = {}
    for key, value in sd.items():
        if key in _MAE_SIMPLE:
            out[_MAE_SIMPLE[key]] = value
        elif m := re.match(r"encoder\.blocks\.(\d+)\.(.*)$", key):
            out.update(_block_to_hf(m.group(2), value, f"vit.encoder.layer.{m.group(1)}"))
        elif m := re.match(r"decoder_blocks\.(\d+)\.(.*)$", key):
            out.update(_block_to_hf(m.group(2), value, f"decoder.decoder_layers.{m.group(1)}"))
        else:  # mask_token, decoder_pos_embed, decoder_embed / norm / pred
            out[f"decoder.{key}"] = value
    return out


def mae_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`ViTMAEForPreTraining`'s checkpoint layout (or a `ViTMAEModel`'s: encoder only) -> ours."""
    simple = {v: k for k, v in _MAE_SIMPLE.items()}
    block_rev = {v: k for k, v in _MAE_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        key = key if key.startswith(("vit.", "decoder.")) else f"vit.{key}"  # ViTMAEModel
        key = key.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers.")
        if key in simple:
            out[simple[key]] = value
            continue
        m = re.match(
            r"(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.*)\.(weight|bias)$", key
        )
        if m is None:
            out[key.removeprefix("decoder.")] = value
            continue
        ours = (
            "encoder.blocks" if m.group(1).startswith("vit") else "decoder_blocks"
        ) + f".{m.group(2)}"
        module, param = m.group(3), m.group(4)
        if module.startswith("attention.attention."):
            qkv.setdefault(f"{ours}.attn.qkv.{param}", {})[module.rsplit(".", 1)[1]] = value
        else:
            out[f"{ours}.{block_rev[module]}.{param}"] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts[name] for name in _QKV], dim=0)
    return out
