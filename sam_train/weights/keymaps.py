"""Rename tables between our state-dict layouts and the official / timm ones.

Our ViT already uses timm's names, so the stage-1 maps are prefix changes; the SAM image
encoder map lives with the SAM model (`sam_train.models.sam.keymap`).
"""

from __future__ import annotations

import torch

from sam_train.weights.checkpoints import LoadedWeights, WeightsError

MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def mae_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MaskedAutoencoder state -> the official MAE layout (encoder keys at the top level)."""
    return {k.removeprefix("encoder."): v for k, v in sd.items()}


def mae_from_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official MAE layout -> our MaskedAutoencoder state."""
    return {(k if k.startswith(MAE_DECODER_PREFIXES) else f"encoder.{k}"): v for k, v in sd.items()}


def encoder_state(weights: LoadedWeights) -> dict[str, torch.Tensor]:
    """The ViT encoder of any supported layout, in our (= timm) ViT layout."""
    sd, layout = weights.state_dict, weights.layout
    if layout == "sam_train_mae":
        return {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    if layout == "mae_official":
        return {k: v for k, v in sd.items() if not k.startswith(MAE_DECODER_PREFIXES)}
    if layout == "vit":
        return {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    if layout in ("sam_train_sam", "sam_official"):
        from sam_train.models.sam.keymap import sam_encoder_state_from_official

        enc = {
            k.removeprefix("image_encoder."): v
            for k, v in sd.items()
            if k.startswith("image_encoder.")
        }
        return enc if layout == "sam_train_sam" else sam_encoder_state_from_official(enc)
    raise WeightsError(f"no encoder in a {layout} checkpoint")
