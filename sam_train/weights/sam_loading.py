"""A `Sam` from any SAM checkpoint (a Lightning checkpoint, our export, the official one):
its architecture from the stored metadata or, failing that, from the tensors' shapes."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sam_train.models.lora import merge_lora_state
from sam_train.models.sam.sam import Sam, build_from_architecture
from sam_train.weights.checkpoints import SAM_LAYOUTS, WeightsError, read_weights
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
        neck_upsample=neck_upsample_of(sd),
        **_prompt_architecture(sd),
    )


def neck_upsample_of(sd: dict[str, torch.Tensor]) -> int:
    """The ViT encoder's `neck_upsample` from its upsampling stages' transposed convolutions
    (`image_encoder.upsample.N.weight`, 4-D): 2 ** their count."""
    convs = [k for k, v in sd.items() if k.startswith("image_encoder.upsample.") and v.ndim == 4]
    return 2 ** len(convs)


def _prompt_architecture(sd: dict[str, torch.Tensor]) -> dict:
    """The prompt encoder's and mask decoder's `build_sam` arguments from their shapes."""
    return dict(
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


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    """1 + the largest index the regex's group matches in the keys (0 when none does)."""
    found = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


# MobileSAM's TinyViT hard-codes a 64 x 64 embedding; its stem's kernel tells which family:
# 3x3 stride-2 twice (MobileSAM, 1024 px, SAM's mean/std), 1x1 (LiteMedSAM, 256 px, min-max)
TINY_VIT_STEMS = {3: (4, "imagenet"), 1: (1, "min_max")}
TINY_VIT_GRID = 64


def infer_tiny_vit_architecture(sd: dict[str, torch.Tensor]) -> dict:
    """`build_tiny_vit_sam` arguments from a MobileSAM-layout state dict's shapes (our layout:
    the names are MobileSAM's). The input size and the pixel normalisation are not in the
    shapes; they are recognised from the stem (`TINY_VIT_STEMS`)."""
    enc = "image_encoder."
    kernel = sd[enc + "patch_embed.seq.0.c.weight"].shape[-1]
    if kernel not in TINY_VIT_STEMS:
        raise WeightsError(
            f"a TinyViT stem with {kernel}x{kernel} convolutions is neither MobileSAM's (3x3) "
            "nor LiteMedSAM's (1x1), and the file records no architecture"
        )
    stem_stride, pixel_norm = TINY_VIT_STEMS[kernel]
    conv1 = sd[enc + "layers.0.blocks.0.conv1.c.weight"]  # [hidden, C0, 1, 1]
    dims, depths, heads, windows = [conv1.shape[1]], [], [], []
    for i in range(4):
        depths.append(_count(sd, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\."))
        if i:
            biases = sd[f"{enc}layers.{i}.blocks.0.attn.attention_biases"]  # [heads, window^2]
            dims.append(sd[f"{enc}layers.{i}.blocks.0.attn.norm.weight"].shape[0])
            heads.append(biases.shape[0])
            windows.append(int(round(biases.shape[1] ** 0.5)))
    b1 = f"{enc}layers.1.blocks.0."
    return dict(
        encoder="tiny_vit",
        image_size=TINY_VIT_GRID * 4 * stem_stride,
        stem_stride=stem_stride,
        embed_dims=dims,
        depths=depths,
        num_heads=[max(1, dims[0] // 32), *heads],  # stage 0 is convolutional: unused
        window_sizes=[windows[0], *windows],  # stage 0: unused
        mlp_ratio=sd[b1 + "mlp.fc1.weight"].shape[0] / dims[1],
        mbconv_expand_ratio=conv1.shape[0] / dims[0],
        local_conv_size=sd[b1 + "local_conv.c.weight"].shape[-1],
        pixel_norm=pixel_norm,
        **_prompt_architecture(sd),
    )


def sam_architecture(sd: dict[str, torch.Tensor], metadata: dict) -> dict:
    """Builder arguments (`build_from_architecture`): the checkpoint's own record over what the
    shapes say (a record alone where the shapes cannot say it: a ViT encoder without
    relative-position tables)."""
    stored = metadata.get("architecture") or {}
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in sd:
        return {**infer_tiny_vit_architecture(sd), **stored}
    if stored and "image_encoder.blocks.0.attn.rel_pos_h" not in sd:
        return dict(stored)
    return {**infer_sam_architecture(sd), **stored}


def load_sam(path: str | Path) -> Sam:
    """A `Sam` from a Lightning checkpoint, our export, an official SAM checkpoint, or a
    MobileSAM-family one (MobileSAM, LiteMedSAM)."""
    weights = read_weights(path)
    if weights.layout not in SAM_LAYOUTS:
        raise WeightsError(f"{path} holds a {weights.layout} checkpoint, not a SAM")
    sd = weights.state_dict
    if weights.layout == "sam_official":
        sd = sam_state_from_official(sd)
    sd = merge_lora_state(sd)  # a LoRA-trained checkpoint: adapters folded into the weights
    try:
        arch = sam_architecture(sd, weights.metadata)
        sam = build_from_architecture(arch)
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
