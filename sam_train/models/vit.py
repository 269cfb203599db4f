"""One Vision Transformer backbone for both stages.

Names follow timm / official MAE (`patch_embed.proj`, `pos_embed`, `cls_token`, `blocks.N.attn.qkv`,
`blocks.N.mlp.fc1`, `norm`) so checkpoints map by a rename table. Stage 1 uses it with a class
token and fixed sin-cos positions on a subset of tokens; stage 2 (SAM's image encoder) uses it
without a class token, with learned positions, windowed attention in most blocks and decomposed
relative positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from sam_train.models.pos_embed import resize_grid_embed, sincos_2d


@dataclass(frozen=True)
class VitSize:
    embed_dim: int
    depth: int
    num_heads: int


VIT_SIZES: dict[str, VitSize] = {
    "tiny": VitSize(192, 12, 3),
    "small": VitSize(384, 12, 6),
    "base": VitSize(768, 12, 12),
    "large": VitSize(1024, 24, 16),
    "huge": VitSize(1280, 32, 16),
}


class PatchEmbed(nn.Module):
    """Image to patch tokens: [B, C, H, W] -> [B, H/p * W/p, D] with a strided conv."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {p}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, L, D]


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings of every (query, key) offset along one axis: [q_size, k_size, head_dim].

    `rel_pos` holds 2*size-1 learned rows; it is resized linearly when the grid differs from
    the one it was trained for (as the SAM encoder does).
    """
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = (
            F.interpolate(rel_pos.t().unsqueeze(0).float(), size=span, mode="linear")[0]
            .t()
            .to(rel_pos.dtype)
        )
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor, hw: tuple[int, int], rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor
) -> torch.Tensor:
    """Additive attention bias from decomposed relative positions (MViTv2 / SAM).

    q: [B, nh, H*W, hd] (unscaled queries). Returns [B, nh, H*W, H*W].
    """
    h, w = hw
    b, nh, _, hd = q.shape
    r_h = relative_position_table(h, h, rel_pos_h)  # [H, H, hd]
    r_w = relative_position_table(w, w, rel_pos_w)  # [W, W, hd]
    r_q = q.reshape(b, nh, h, w, hd)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)  # [B, nh, H, W, H]
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)  # [B, nh, H, W, W]
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # [B, nh, H, W, H, W]
    return bias.reshape(b, nh, h * w, h * w)


def fold_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    hw: tuple[int, int],
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the decomposed relative-position bias into the query/key dot product.

    q' = [q * hd^-0.5, q . R_h(row), q . R_w(col)] and k' = [k, onehot(row), onehot(col)], so
    q'_i . k'_j = q_i . k_j / sqrt(hd) + bias[i, j] with the bias of `decomposed_rel_pos_bias`;
    attention over (q', k') with scale 1 gives the same result without ever building the
    [N, N] bias (4096 x 4096 per head in a global block of the 1024-px SAM encoder), and lets
    the backward run in the fused kernel (a bias that needs gradients sends SDPA to the math
    path, which stores every [N, N] matrix).

    q, k: [B, nh, H*W, hd] (unscaled queries). Returns q', k': [B, nh, H*W, hd + H + W].
    """
    h, w = hw
    b, nh, n, hd = q.shape
    r_h = relative_position_table(h, h, rel_pos_h)  # [H, H, hd]
    r_w = relative_position_table(w, w, rel_pos_w)  # [W, W, hd]
    r_q = q.reshape(b, nh, h, w, hd)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).reshape(b, nh, n, h)  # [B, nh, N, H]
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).reshape(b, nh, n, w)  # [B, nh, N, W]
    token = torch.arange(n, device=q.device)
    onehot = torch.cat([F.one_hot(token // w, h), F.one_hot(token % w, w)], dim=-1).to(
        k.dtype
    )  # [N, H + W]: key j's row and column
    q_folded = torch.cat([q * hd**-0.5, bias_h, bias_w], dim=-1)
    k_folded = torch.cat([k, onehot.expand(b, nh, n, h + w)], dim=-1)
    return q_folded, k_folded


def cpu_bf16_autocast(x: torch.Tensor) -> bool:
    """True inside `torch.autocast("cpu", dtype=torch.bfloat16)` for a CPU tensor."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v with plain matrix products (q, k, v [B, nh, N, hd]).

    It keeps each [N, N] attention matrix for the backward (segment-anything's way), so
    `Attention` runs it only where that is cheap: under CPU bf16 autocast, where the products
    go to the bf16 matmul units (the CPU's fused SDPA kernel gains little from bf16 and, with
    relative positions, works on folded q / k / v three times as wide; `model.grad_checkpointing`
    gives the memory back), and in fp32 on the CPU for calls whose matrices are small
    (`dense_bias_fits`)."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1).to(v.dtype) @ v


# Largest [B, nh, N, N] attention matrix (bytes, one call) that the CPU computes explicitly with
# the dense relative-position bias; above it the bias is folded into q and k (`fold_rel_pos`).
# Measured in fp32, 1 thread (`benchmarks/bench_attention.py`, benchmarks/README.md): explicit
# trains in ~0.85x of the fold's time in the 16 x 16 grid and the 4 windows of sam_vit_tiny at
# 256 px (0.8 / 1.8 MB), ties in the 25 windows of 14 x 14 of ViT-B at 1024 px (46 MB: 1.02x,
# with 20% more peak memory), and in a global block at 1024 px (805 MB) is faster (0.7x) but
# stores every matrix for the backward, 2.5 GB of peak against the fold's 0.37 GB. 32 MiB keeps
# the small grids explicit and the 1024-px encoder folded throughout.
DENSE_BIAS_MAX_BYTES = 32 * 2**20


def dense_bias_fits(q: torch.Tensor, max_bytes: int = DENSE_BIAS_MAX_BYTES) -> bool:
    """True where the attention of `q` [B, nh, N, hd] runs explicitly with the dense bias: a
    CPU tensor whose [B, nh, N, N] matrix takes at most `max_bytes`."""
    b, nh, n, _ = q.shape
    return q.device.type == "cpu" and b * nh * n * n * q.element_size() <= max_bytes


class Attention(nn.Module):
    """Multi-head self-attention; with relative positions, one of two exact formulations per call.

    - Small [N, N] matrices on the CPU (`dense_bias_fits`: B * nh * N * N * 4 bytes at most
      `dense_bias_max_bytes` in one call, e.g. every block of sam_vit_tiny at 256 or 512 px,
      batch 1): `explicit_attention` with the dense bias of `decomposed_rel_pos_bias`, the
      faster path.
    - Larger ones (every block of the 1024-px ViT-B encoder, 46 MB for its windows, 805 MB for a
      global block), and every call off the CPU: the bias folded into the dot product
      (`fold_rel_pos`) and the fused `F.scaled_dot_product_attention`: no [N, N] matrix stored,
      3x the attention-product work in a 64 x 64 grid.
    Under CPU bf16 autocast it always runs `explicit_attention` (the bf16 units make the products
    cheap). Without relative positions: `F.scaled_dot_product_attention`.

    Args:
        dim: token width.
        num_heads: number of heads; `dim` must divide evenly.
        qkv_bias: add a bias to the fused query/key/value projection.
        rel_pos_size: grid side (tokens) the relative-position tables are made for; 0 disables
            relative positions.
        dense_bias_max_bytes: largest attention matrix (bytes, B * nh * N * N * element size
            per call) computed explicitly with the dense bias in fp32 on the CPU; 0 folds always.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rel_pos_size: int = 0,
        dense_bias_max_bytes: int = DENSE_BIAS_MAX_BYTES,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if dense_bias_max_bytes < 0:
            raise ValueError(f"dense_bias_max_bytes is {dense_bias_max_bytes}; use 0 or more")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dense_bias_max_bytes = dense_bias_max_bytes
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = rel_pos_size > 0
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, nh, N, hd)
        if self.use_rel_pos and (hw is None or hw[0] * hw[1] != n):
            raise ValueError("relative positions need the token grid (H, W) with H*W tokens")
        if cpu_bf16_autocast(x) or (
            self.use_rel_pos and dense_bias_fits(q, self.dense_bias_max_bytes)
        ):
            bias = None
            if self.use_rel_pos:
                bias = decomposed_rel_pos_bias(q, hw, self.rel_pos_h, self.rel_pos_w)
            out = explicit_attention(q, k, v, bias)
        elif self.use_rel_pos:
            q, k = fold_rel_pos(q, k, hw, self.rel_pos_h, self.rel_pos_w)  # (B, nh, N, hd+H+W)
            # the fused CPU kernel needs v as wide as q and k: zero columns, dropped after
            v = F.pad(v, (0, q.shape[-1] - self.head_dim))
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., : self.head_dim]
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def window_partition(x: torch.Tensor, hw: tuple[int, int], window: int):
    """[B, H*W, D] -> windows [B * nW, window*window, D], plus the padded grid size."""
    b, _, d = x.shape
    h, w = hw
    x = x.view(b, h, w, d)
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, d)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, d)
    return x, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: [B * nW, window*window, D] -> [B, H*W, D]."""
    hp, wp = padded_hw
    h, w = hw
    d = windows.shape[-1]
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, d)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, d)
    return x[:, :h, :w].reshape(b, h * w, d)


class Block(nn.Module):
    """Pre-norm transformer block; windowed when `window_size` > 0 (tokens must be a grid)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        window_size: int = 0,
        rel_pos_size: int = 0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, rel_pos_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            if hw is None:
                raise ValueError("windowed attention needs the token grid (H, W)")
            y, padded = window_partition(y, hw, self.window_size)
            y = self.attn(y, (self.window_size, self.window_size))
            y = window_unpartition(y, self.window_size, padded, hw)
        else:
            y = self.attn(y, hw)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone.

    Args:
        img_size: training image side in pixels (positional table size).
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        class_token: prepend a learned [CLS] token (MAE / timm layout).
        pos_embed: "sincos" (fixed 2-D table, MAE) or "learned" (zero-initialised, SAM).
        window_size: attention window in tokens for blocks not in `global_attn_indexes`; 0 = all global.
        global_attn_indexes: blocks with global attention when windowing is on.
        use_rel_pos: decomposed relative positions in every block (SAM encoder).
        drop_path_rate: stochastic depth, rising linearly to this value over depth.
        final_norm: LayerNorm after the last block (MAE yes, SAM no: its neck normalises).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        pos_embed: str = "sincos",
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        use_rel_pos: bool = False,
        drop_path_rate: float = 0.0,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside 0..{depth - 1}")
        # constructor arguments, stored with exported weights so a file says what it holds
        self.architecture = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            class_token=class_token,
            pos_embed=pos_embed,
            window_size=window_size,
            global_attn_indexes=list(global_attn_indexes),
            use_rel_pos=use_rel_pos,
            final_norm=final_norm,
        )
        self.img_size, self.patch_size = img_size, patch_size
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.grid_size = img_size // patch_size
        self.num_prefix_tokens = 1 if class_token else 0
        # recompute blocks in the backward instead of holding their activations: False, True
        # (every block) or n (every n-th block: less recomputation, less memory saved)
        self.grad_checkpointing: bool | int = False

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        n_pos = self.num_prefix_tokens + self.grid_size**2
        self.pos_embed = nn.Parameter(
            torch.zeros(1, n_pos, embed_dim), requires_grad=pos_embed == "learned"
        )
        if pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embed[0, self.num_prefix_tokens :] = sincos_2d(
                    embed_dim, self.grid_size, self.grid_size
                )
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        windows = [0 if i in global_attn_indexes else window_size for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                drop_path=dpr[i],
                window_size=windows[i],
                # relative tables span the attended area: the window, or the whole grid
                rel_pos_size=(windows[i] or self.grid_size) if use_rel_pos else 0,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self._init_weights()

    # --------------------------------------------------------------------------------------
    # initialisation
    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear (MAE)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases."""
        return {"pos_embed", "cls_token"}

    # --------------------------------------------------------------------------------------
    # forward pieces (MAE calls them one by one; `forward` chains them)
    def grid_pos_embed(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional table for the patch tokens at `grid_hw`: [1, H*W, D] (resized if needed)."""
        pos = self.pos_embed[:, self.num_prefix_tokens :]
        if grid_hw != (self.grid_size, self.grid_size):
            pos = resize_grid_embed(pos, grid_hw)
        return pos

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with positions added: [B, L, D], and the grid (H, W)."""
        grid_hw = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)
        return tokens + self.grid_pos_embed(grid_hw), grid_hw

    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        cls = self.cls_token + self.pos_embed[:, :1]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)

    def forward_blocks(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Run every block then the final norm. `hw` is the token grid (needed for windows)."""
        every = int(self.grad_checkpointing) if self.training else 0
        for i, blk in enumerate(self.blocks):
            if every and i % every == 0:
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> tokens [B, prefix + L, D] (class token first when present)."""
        tokens, hw = self.embed(x)
        if self.cls_token is not None:
            # a class token breaks the grid layout, so windows/relative positions are not allowed
            return self.forward_blocks(self.prepend_cls(tokens), None)
        return self.forward_blocks(tokens, hw)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features as a map: [B, C, H, W] -> [B, D, H/p, W/p] (no class token)."""
        tokens, hw = self.embed(x)
        tokens = self.forward_blocks(
            self.prepend_cls(tokens), hw if self.cls_token is None else None
        )
        tokens = tokens[:, self.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *hw)


def vit_size(name: str) -> VitSize:
    """Look up a named size ('tiny', 'small', 'base', 'large', 'huge')."""
    try:
        return VIT_SIZES[name]
    except KeyError:
        raise ValueError(f"unknown ViT size {name!r}; choose one of {sorted(VIT_SIZES)}") from None
