"""A `Sam` from any SAM checkpoint (a Lightning checkpoint, our export, the official one):
its architecture from the stored metadata or, failing that, from the tensors' shapes."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sam_train.models.lora import merge_lora_state
from sam_train.models.sam.sam import Sam, build_sam
from sam_train.weights.checkpoints import WeightsError, read_weights
from sam_train.weights.keymaps import sam_state_from_official


def infer_sam_architecture(sd: dict[str, torch.Tensor]) -> dict:
    """`build_sam` arguments from an (our-layout) SAM state dict's shapes alone (the decoder's
    head count is not visible in shapes: the official 8 is assumed)."""
    proj = sd["image_encoder.patch_embed.proj.weight"]  # [D, 3, p, p]
    dim, patch = proj.shape[0], proj.shape[-1]
    grid = int(round(sd["image_encoder.pos_embed"].shape[1] ** 0.5))
    depth = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
    )
    if "image_encoder.blocks.0.attn.rel_pos_h" not in sd:
        raise WeightsError(
            "this SAM's encoder has no relative-position tables, so its heads, windows and "
            "global blocks cannot be read from the tensors' shapes and the file carries no "
            "architecture: load the checkpoint or export sam_train wrote (they carry it)"
        )
    rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    window = min((r.shape[0] + 1) // 2 for r in rel)
    return dict(
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=dim // rel[0].shape[1],
        encoder_global_attn_indexes=[i for i, r in enumerate(rel) if (r.shape[0] + 1) // 2 == grid],
        image_size=grid * patch,
        patch_size=patch,
        window_size=window,
        prompt_embed_dim=sd["prompt_encoder.no_mask_embed.weight"].shape[1],
        text_embed_dim=sd["prompt_encoder.text_proj.weight"].shape[1]
        if "prompt_encoder.text_proj.weight" in sd
        else 0,
        mask_in_chans=sd["prompt_encoder.mask_downscaling.0.weight"].shape[0] * 4,
        decoder_depth=1
        + max(
            int(m.group(1))
            for k in sd
            if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))
        ),
        decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )


def sam_architecture(sd: dict[str, torch.Tensor], metadata: dict) -> dict:
    """`build_sam` arguments: the checkpoint's own record over what the shapes say (a record
    alone where the shapes cannot say it: an encoder without relative-position tables)."""
    stored = metadata.get("architecture") or {}
    if stored and "image_encoder.blocks.0.attn.rel_pos_h" not in sd:
        return dict(stored)
    return {**infer_sam_architecture(sd), **stored}


def load_sam(path: str | Path) -> Sam:
    """A `Sam` from a Lightning checkpoint, our export, or an official SAM checkpoint."""
    weights = read_weights(path)
    if weights.layout not in ("sam_train_sam", "sam_official"):
        raise WeightsError(f"{path} holds a {weights.layout} checkpoint, not a SAM")
    sd = weights.state_dict
    if weights.layout == "sam_official":
        sd = sam_state_from_official(sd)
    sd = merge_lora_state(sd)  # a LoRA-trained checkpoint: adapters folded into the weights
    try:
        arch = sam_architecture(sd, weights.metadata)
        sam = build_sam(**arch)
        missing, unexpected = sam.load_state_dict(sd, strict=False)
    except WeightsError as err:  # already says what is missing (an architecture to read)
        raise WeightsError(f"{path}: {err}") from err
    except (KeyError, ValueError, RuntimeError) as err:  # a damaged or edited SAM state
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise WeightsError(
            f"{path}: its SAM tensors do not form a SAM ({type(err).__name__}: {first})"
        ) from err
    if missing or unexpected:
        raise WeightsError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return sam.eval()
