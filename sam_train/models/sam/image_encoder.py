"""SAM's image encoder: the shared ViT backbone (windowed attention, decomposed relative
positions, learned absolute positions, no class token) plus a conv neck to the prompt width.

Subclassing `VisionTransformer` keeps its parameter names at the top level (`patch_embed.proj`,
`pos_embed`, `blocks.N.*`, `neck.N.*`), the official SAM layout up to the few renames in
`keymap.py`, and the layout a stage-1 MAE encoder loads into.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sam_train.models.sam.common import LayerNorm2d
from sam_train.models.vit import VisionTransformer


class ImageEncoderViT(VisionTransformer):
    """[B, 3, H, W] -> [B, out_chans, H/p * f, W/p * f] (p the patch, f `neck_upsample`) for
    any H, W divisible by the patch.

    Args:
        img_size: training image side in pixels (sizes the positional table and the relative
            tables of the global blocks; other sizes resize them).
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: ViT width.
        depth: ViT blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / width.
        out_chans: channels of the output embedding (the prompt width, 256).
        qkv_bias: bias on the query/key/value projection.
        window_size: attention window (tokens) of the non-global blocks (14 in SAM).
        global_attn_indexes: blocks with global attention.
        use_rel_pos: decomposed relative positions in every block.
        drop_path_rate: stochastic depth, rising linearly to this value.
        neck_upsample: f, 1, 2 or 4: after the neck, log2(f) stages of a stride-2 transposed
            convolution and a LayerNorm2d (GELU between stages, as in the mask decoder's
            upscaler) multiply the embedding grid by f, so a ViT/16 meets a teacher's (or a
            decoder's) finer grid without 16x the tokens. The neck runs first, unchanged, so
            f = 1 is the plain SAM encoder (same tensors) and a SAM / MAE neck still loads; the
            added stages end in a LayerNorm2d, like the neck, so the output keeps its scale.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        drop_path_rate: float = 0.0,
        neck_upsample: int = 1,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            class_token=False,
            pos_embed="learned",
            window_size=window_size,
            global_attn_indexes=tuple(global_attn_indexes),
            use_rel_pos=use_rel_pos,
            drop_path_rate=drop_path_rate,
            final_norm=False,
        )
        if neck_upsample not in NECK_UPSAMPLE_FACTORS or patch_size % neck_upsample:
            raise ValueError(
                f"neck_upsample={neck_upsample}: choose one of {NECK_UPSAMPLE_FACTORS} that "
                f"divides the patch size {patch_size}"
            )
        self.architecture.update(out_chans=out_chans, neck_upsample=neck_upsample)
        self.out_chans = out_chans
        self.neck_upsample = neck_upsample
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

        # no module (and no state-dict key) at f = 1: the plain encoder's tensors exactly
        if neck_upsample > 1:
            self.upsample = upsample_stages(out_chans, neck_upsample)

    @property
    def embedding_stride(self) -> int:
        """Input pixels per image-embedding cell."""
        return self.patch_size // self.neck_upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """[B, 3, H, W] -> [B, out_chans, H/p * f, W/p * f]."""
        x = self.neck(self.forward_grid(x))  # [B, C, H/p, W/p]
        return self.upsample(x) if self.neck_upsample > 1 else x


NECK_UPSAMPLE_FACTORS = (1, 2, 4)


def upsample_stages(channels: int, factor: int) -> nn.Sequential:
    """log2(factor) x (ConvTranspose2d k=2 s=2, LayerNorm2d), GELU between: [B, C, h, w] ->
    [B, C, h * factor, w * factor]."""
    layers: list[nn.Module] = []
    for i in range(factor.bit_length() - 1):
        if i:
            layers.append(nn.GELU())
        layers += [
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            LayerNorm2d(channels),
        ]
    return nn.Sequential(*layers)
