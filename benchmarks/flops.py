"""Analytic FLOP counts of ViT / MAE / SAM-encoder training steps (matmuls and attention only).

A multiply-add counts as 2 FLOPs. Counted: every Linear / patch-embedding conv, the two
attention products (q @ k^T and attn @ v) and, for decomposed relative positions, the query x
table products. Not counted: norms, activations, softmax, residual adds, the loss, the
optimiser (together a few per cent at these sizes; they are memory-bound, not FLOP-bound).

Training = forward + backward. The backward of a matmul costs twice its forward (gradient of
the input and of the weight), except where the input needs no gradient: the patch embedding
sees the images, so its backward is the weight gradient only.

`torch.utils.flop_counter.FlopCounterMode` counts the same Linears but not the CPU kernels of
`F.scaled_dot_product_attention`; `check_against_flop_counter` in bench_mae.py adds
`attention_flops` to what it counts, so the two methods check each other.

    from benchmarks.flops import mae_train_flops
    mae_train_flops(batch=8, img_size=224, patch=16, dim=768, depth=12, heads=12,
                    dec_dim=512, dec_depth=8, mask_ratio=0.75).total
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Flops:
    """Forward FLOPs by part; `train` = forward + backward (see the module docstring)."""

    parts: dict[str, float] = field(default_factory=dict)
    # forward FLOPs whose backward has no input gradient (the first layer)
    first_layer: float = 0.0

    def add(self, name: str, flops: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + flops

    @property
    def forward(self) -> float:
        return sum(self.parts.values())

    @property
    def train(self) -> float:
        return 3.0 * self.forward - self.first_layer

    @property
    def total(self) -> float:
        return self.train


def linear_flops(tokens: float, d_in: int, d_out: int) -> float:
    """y = x W^T (+ b) over `tokens` rows."""
    return 2.0 * tokens * d_in * d_out


def attention_flops(batch: float, heads: int, q_len: int, k_len: int, head_dim: int) -> float:
    """q @ k^T and attn @ v for `batch` sequences (windows count as sequences)."""
    return 2.0 * 2.0 * batch * heads * q_len * k_len * head_dim


def block_flops(
    flops: Flops, name: str, seqs: float, seq_len: int, dim: int, heads: int, mlp_ratio: float = 4.0
) -> None:
    """One pre-norm transformer block over `seqs` sequences of `seq_len` tokens."""
    tokens = seqs * seq_len
    hidden = int(dim * mlp_ratio)
    flops.add(f"{name}.linear", linear_flops(tokens, dim, 3 * dim) + linear_flops(tokens, dim, dim))
    flops.add(f"{name}.mlp", linear_flops(tokens, dim, hidden) + linear_flops(tokens, hidden, dim))
    flops.add(f"{name}.attention", attention_flops(seqs, heads, seq_len, seq_len, dim // heads))


def patch_embed_flops(
    flops: Flops, images: float, grid_tokens: int, patch: int, chans: int, dim: int
) -> None:
    f = linear_flops(images * grid_tokens, patch * patch * chans, dim)
    flops.add("patch_embed", f)
    flops.first_layer += f


def mae_train_flops(
    batch: int,
    img_size: int,
    patch: int,
    dim: int,
    depth: int,
    heads: int,
    dec_dim: int,
    dec_depth: int,
    dec_heads: int = 16,
    mask_ratio: float = 0.75,
    mlp_ratio: float = 4.0,
    in_chans: int = 3,
) -> Flops:
    """One MAE step: patch embedding of every patch, encoder on the kept patches + [CLS],
    decoder on every patch + [CLS], prediction head."""
    grid = (img_size // patch) ** 2
    kept = int(grid * (1 - mask_ratio))
    f = Flops()
    patch_embed_flops(f, batch, grid, patch, in_chans, dim)
    for _ in range(depth):
        block_flops(f, "encoder", batch, 1 + kept, dim, heads, mlp_ratio)
    f.add("decoder.embed", linear_flops(batch * (1 + kept), dim, dec_dim))
    for _ in range(dec_depth):
        block_flops(f, "decoder", batch, 1 + grid, dec_dim, dec_heads, mlp_ratio)
    f.add("decoder.pred", linear_flops(batch * (1 + grid), dec_dim, patch * patch * in_chans))
    return f


def rel_pos_flops(seqs: float, heads: int, h: int, w: int, head_dim: int) -> float:
    """Decomposed relative positions: q against the row table and the column table
    ([seqs, nh, H, W, hd] x [H, H, hd] and x [W, W, hd]); the bias add itself is not counted."""
    return 2.0 * seqs * heads * h * w * (h + w) * head_dim


def sam_encoder_flops(
    batch: int,
    img_size: int = 1024,
    patch: int = 16,
    dim: int = 768,
    depth: int = 12,
    heads: int = 12,
    window: int = 14,
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    out_chans: int = 256,
    mlp_ratio: float = 4.0,
    in_chans: int = 3,
    use_rel_pos: bool = True,
) -> Flops:
    """SAM image encoder forward: ViT with windowed blocks (padded to whole windows), global
    blocks, decomposed relative positions, and the neck (1x1 conv, 3x3 conv)."""
    side = img_size // patch
    f = Flops()
    patch_embed_flops(f, batch, side * side, patch, in_chans, dim)
    hd = dim // heads
    for i in range(depth):
        if i in global_attn_indexes or window == 0:
            seqs, s_h, s_w, name = batch, side, side, "global"
        else:
            padded = -(-side // window) * window
            seqs, s_h, s_w, name = batch * (padded // window) ** 2, window, window, "window"
        block_flops(f, name, seqs, s_h * s_w, dim, heads, mlp_ratio)
        if use_rel_pos:
            f.add(f"{name}.rel_pos", rel_pos_flops(seqs, heads, s_h, s_w, hd))
    tokens = batch * side * side
    f.add(
        "neck",
        linear_flops(tokens, dim, out_chans) + linear_flops(tokens, 9 * out_chans, out_chans),
    )
    return f
