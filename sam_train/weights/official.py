"""The official `segment-anything` model at one of our architectures (for checks and hand-over).

Needs the `segment-anything` package (`pip install segment-anything`); our own code never does.
"""

from __future__ import annotations

import torch


def build_official_sam(architecture: dict):
    """A `segment_anything.modeling.Sam` with the shapes of `architecture` (our `build_sam`
    arguments, as stored in export metadata); load an exported `--format sam` file into it."""
    try:
        from segment_anything.modeling import (
            ImageEncoderViT,
            MaskDecoder,
            PromptEncoder,
            Sam,
            TwoWayTransformer,
        )
    except ImportError as err:
        raise ImportError("build_official_sam needs `pip install segment-anything`") from err
    a = architecture
    grid = a["image_size"] // a["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=a["image_size"],
            patch_size=a["patch_size"],
            embed_dim=a["encoder_embed_dim"],
            depth=a["encoder_depth"],
            num_heads=a["encoder_num_heads"],
            out_chans=a["prompt_embed_dim"],
            qkv_bias=True,
            use_rel_pos=True,
            window_size=a["window_size"],
            global_attn_indexes=tuple(a["encoder_global_attn_indexes"]),
            norm_layer=torch.nn.LayerNorm,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(a["image_size"], a["image_size"]),
            mask_in_chans=a.get("mask_in_chans", 16),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a.get("decoder_depth", 2),
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a.get("decoder_mlp_dim", 2048),
                num_heads=a.get("decoder_num_heads", 8),
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=a.get("iou_head_hidden_dim", 256),
        ),
    )
