"""TinyViT, the image encoder of MobileSAM and of the models built on it (LiteMedSAM, ...).

Layout (Wu et al. 2022, as MobileSAM cut it for SAM): a convolutional stem, one stage of
MBConv blocks, three stages of windowed-attention blocks, and SAM's neck to 256 channels:

    [B, 3, S, S] -stem (stride s)-> [B, C0, S/s, S/s]   MBConv stage, merge /2
                 -> [B, C1, S/2s, S/2s]                 attention stage, merge /2
                 -> [B, C2, S/4s, S/4s]                 attention stage, merge /1
                 -> [B, C3, S/4s, S/4s]                 attention stage, neck
                 -> [B, 256, S/4s, S/4s]

MobileSAM: s = 4 (two 3x3 stride-2 convolutions), S = 1024 -> 64 x 64 embeddings.
LiteMedSAM: s = 1 (two 1x1 convolutions), S = 256 -> 64 x 64 embeddings.

Module and parameter names are MobileSAM's (`patch_embed.seq.N.c/bn`,
`layers.N.blocks.M.attn.qkv`, `layers.N.downsample.convK`, `neck.N`), so its checkpoints load
by name and our exports are its layout. Two details decide numerical agreement with it and are
kept on purpose: the feature map is zero-padded to whole windows *before* the attention's
LayerNorm, so padding tokens take part in each border window's attention; and each head's
q, k, v sit next to each other in `qkv`'s output (head-major, not timm's q|k|v split).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.sam.common import LayerNorm2d
from sam_train.models.vit import DropPath


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (`c`, `bn`: MobileSAM's `Conv2d_BN`).

    Args:
        in_chans, out_chans: channels.
        kernel_size, stride, padding, groups: of the convolution.
        bn_weight_init: initial BatchNorm scale (0 makes a residual branch start as identity).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False),
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """The stem: [B, 3, S, S] -> [B, C0, S/stride, S/stride] through two ConvBN and a GELU.

    Args:
        in_chans: image channels.
        embed_dim: C0.
        stride: 4 (MobileSAM: two 3x3 stride-2 convolutions) or 1 (LiteMedSAM: two 1x1).
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int) -> None:
        super().__init__()
        if stride == 4:
            k, s, p = 3, 2, 1
        elif stride == 1:
            k, s, p = 1, 1, 0
        else:
            raise ValueError(
                f"TinyViT stem stride must be 4 (MobileSAM) or 1 (LiteMedSAM), got {stride}"
            )
        self.stride = stride
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, k, s, p),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, k, s, p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. [B, C, H, W]."""

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.drop_path(self.conv3(y)))


class PatchMerging(nn.Module):
    """[B, C, H, W] -> [B, C', H/stride, W/stride]: 1x1, 3x3 depthwise (strided), 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


def offset_index(window: int) -> torch.Tensor:
    """[N, N] long, N = window^2: for token pair (i, j) the row of their offset
    (|dy|, |dx|) in the bias table, `|dy| * window + |dx|` (the order MobileSAM's table uses)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # [N]
    return (ys[:, None] - ys[None]).abs() * window + (xs[:, None] - xs[None]).abs()


class WindowAttention(nn.Module):
    """Multi-head attention inside one window with a learned bias per head and offset.

    Args:
        dim: token width.
        num_heads: heads (dim / num_heads per head).
        window: window side in tokens (the bias table has window^2 offsets).
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TinyViT width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[Bw, N, C] tokens of Bw windows -> [Bw, N, C]."""
        bw, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(bw, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [Bw, nh, N, hd]
        bias = self.attention_biases[:, self.attention_bias_idxs]  # [nh, N, N]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """Pre-norm MLP (`norm`, `fc1`, `fc2`). [..., C] -> [..., C]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), a depthwise conv, the MLP (residual). [B, H, W, C].

    Args:
        dim: width.
        num_heads: attention heads.
        window_size: attention window side in tokens.
        mlp_ratio: MLP hidden width / width.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        drop_path: stochastic depth of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C], attention within windows of the zero-padded map."""
        b, h, w, c = x.shape
        win = self.window_size
        pad_b, pad_r = -h % win, -w % win
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # [B, Hp, Wp, C]
        nh, nw = (h + pad_b) // win, (w + pad_r) // win
        x = x.view(b, nh, win, nw, win, c).transpose(2, 3).reshape(b * nh * nw, win * win, c)
        x = self.attn(x)  # [B*nh*nw, win*win, C]
        x = x.view(b, nh, nw, win, win, c).transpose(2, 3).reshape(b, nh * win, nw * win, c)
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.windowed_attention(x))  # [B, H, W, C]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(x))


class ConvStage(nn.Module):
    """MBConv blocks, then a merge to the next width. [B, C, H, W] -> [B, C', H/2, W/2]."""

    def __init__(
        self, dim: int, out_dim: int, depth: int, expand_ratio: float, drop_path: Sequence[float]
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, dp) for dp in drop_path[:depth])
        self.downsample = PatchMerging(dim, out_dim, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks, then (except the last stage) a merge. [B, C, H, W] -> [B, C', H', W']."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop_path: Sequence[float],
        out_dim: int | None,
        merge_stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, merge_stride) if out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)  # [B, C, H, W]
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's TinyViT: [B, 3, S, S] -> [B, out_chans, S/(4 stem_stride), S/(4 stem_stride)].

    Args:
        img_size: training image side in pixels (the side SAM's prompt geometry assumes).
        stem_stride: 4 (MobileSAM, 1024 px) or 1 (LiteMedSAM, 256 px); see the module docstring.
        in_chans: image channels.
        embed_dims: width of each of the four stages.
        depths: blocks per stage (the first stage's are MBConv).
        num_heads: attention heads per stage (the first entry is unused: convolutions).
        window_sizes: attention window per stage (the first entry is unused).
        mlp_ratio: MLP hidden width / width in the attention blocks.
        mbconv_expand_ratio: hidden width / width in the MBConv blocks.
        local_conv_size: kernel of the depthwise conv inside each attention block.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        out_chans: channels of the output embedding (the prompt width, 256).
    """

    def __init__(
        self,
        img_size: int = 1024,
        stem_stride: int = 4,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        drop_path_rate: float = 0.0,
        out_chans: int = 256,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.architecture = {"encoder": "tiny_vit", **args}  # stored with encoder exports
        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == 4:
            raise ValueError(
                "TinyViT has four stages: give four embed_dims, depths, num_heads, window_sizes"
            )
        self.img_size = img_size
        self.patch_size = 4 * stem_stride  # input pixels per embedding cell
        self.embedding_stride = self.patch_size
        self.depth = sum(depths)
        self.embed_dim = embed_dims[-1]
        self.out_chans = out_chans
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], stem_stride)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(4)]
        self.layers = nn.ModuleList(
            [ConvStage(embed_dims[0], embed_dims[1], depths[0], mbconv_expand_ratio, dpr)]
        )
        for i in range(1, 4):
            self.layers.append(
                AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    dpr[starts[i] : starts[i] + depths[i]],
                    out_dim=embed_dims[i + 1] if i < 3 else None,
                    merge_stride=2 if i == 1 else 1,  # the last merge keeps the grid (MobileSAM)
                )
            )
        self.apply(_init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def layer_id(self, name: str) -> int:
        """Layer index of a parameter name (no `image_encoder.` prefix) for layer-wise lr
        decay: the stem 0, the k-th block overall k (1-based), a stage's merge as its last
        block, the neck `depth + 1` (MobileSAM's rule, the neck added)."""
        if name.startswith("patch_embed."):
            return 0
        m = re.match(r"layers\.(\d+)\.(blocks\.(\d+)|downsample)\.", name)
        if m is None:
            return self.depth + 1
        stage = int(m.group(1))
        before = sum(len(layer.blocks) for layer in self.layers[:stage])
        if m.group(3) is not None:
            return before + int(m.group(3)) + 1
        return before + len(self.layers[stage].blocks)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the last stage's features before the neck [B, C3, H/p, W/p]."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] (H, W divisible by the patch size) -> [B, out_chans, H/p, W/p]."""
        return self.neck(self.forward_grid(x))

    def train(self, mode: bool = True) -> TinyViT:
        """Batch norms whose weights are all frozen stay in eval mode: a frozen encoder (or one
        under adapters) keeps its running statistics instead of drifting with each batch."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d) and not any(
                    p.requires_grad for p in m.parameters()
                ):
                    m.eval()
        return self


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
