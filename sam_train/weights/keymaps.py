"""Rename tables between our state-dict layouts and the official / timm ones.

Stage 1: our ViT already uses timm's names, so the maps are prefix changes.
Stage 2: prompt encoder and mask decoder names are segment-anything's; the image encoder
differs in two places:
- MLP layers: ours `blocks.N.mlp.fc1/fc2` (timm), official `blocks.N.mlp.lin1/lin2`;
- positional table: ours flat `[1, H*W, D]`, official a grid `[1, H, W, D]`.
Everything else (`patch_embed.proj`, `blocks.N.attn.qkv/proj/rel_pos_h/rel_pos_w`,
`blocks.N.norm1/norm2`, `neck.0..3`) matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from sam_train.models.pos_embed import resize_grid_embed

MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def mae_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MaskedAutoencoder state -> the official MAE layout (encoder keys at the top level)."""
    return {k.removeprefix("encoder."): v for k, v in sd.items()}


def mae_from_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official MAE layout -> our MaskedAutoencoder state."""
    return {(k if k.startswith(MAE_DECODER_PREFIXES) else f"encoder.{k}"): v for k, v in sd.items()}


# ---------------------------------------------------------------- SAM (segment-anything)
_OURS_TO_OFFICIAL = {".mlp.fc1.": ".mlp.lin1.", ".mlp.fc2.": ".mlp.lin2."}
ENCODER_PREFIX = "image_encoder."


def _rename(key: str, table: Mapping[str, str]) -> str:
    for a, b in table.items():
        key = key.replace(a, b)
    return key


def sam_encoder_state_from_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official `ImageEncoderViT` state dict (no prefix) -> ours."""
    table = {b: a for a, b in _OURS_TO_OFFICIAL.items()}
    out = {}
    for key, value in sd.items():
        if key == "pos_embed" and value.dim() == 4:
            value = value.flatten(1, 2)  # [1, H, W, D] -> [1, H*W, D]
        out[_rename(key, table)] = value
    return out


def sam_encoder_state_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `ImageEncoderViT` state dict (no prefix) -> official."""
    out = {}
    for key, value in sd.items():
        if key == "pos_embed" and value.dim() == 3:
            side = math.isqrt(value.shape[1])
            if side * side != value.shape[1]:
                raise ValueError(f"pos_embed has {value.shape[1]} positions, not a square grid")
            value = value.reshape(1, side, side, value.shape[-1])
        out[_rename(key, _OURS_TO_OFFICIAL)] = value
    return out


def _map_full(sd: Mapping[str, torch.Tensor], encoder_fn) -> dict[str, torch.Tensor]:
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
    out = {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIX)}
    out.update({ENCODER_PREFIX + k: v for k, v in encoder_fn(encoder).items()})
    return out


def sam_state_from_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full official SAM checkpoint (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`) -> ours."""
    return _map_full(sd, sam_encoder_state_from_official)


def sam_state_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our full `Sam` state dict -> the official checkpoint layout."""
    return _map_full(sd, sam_encoder_state_to_official)


def sam_encoder_state_from_vit(
    sd: Mapping[str, torch.Tensor], grid_hw: tuple[int, int], num_prefix_tokens: int = 1
) -> dict[str, torch.Tensor]:
    """A stage-1 (MAE) `VisionTransformer` state dict -> our `ImageEncoderViT` layout.

    Drops the class token and the final norm (SAM's neck normalises), strips the class-token
    row of `pos_embed` and resizes it to `grid_hw`. Load the result with `strict=False`: the
    relative-position tables and the neck stay at their initial values (as SAM did from MAE).
    """
    out = {}
    for key, value in sd.items():
        if key == "cls_token" or key.startswith("norm."):
            continue
        if key == "pos_embed":
            value = value[:, num_prefix_tokens:]
            if value.shape[1] != grid_hw[0] * grid_hw[1]:
                value = resize_grid_embed(value, grid_hw)
        out[key] = value
    return out
