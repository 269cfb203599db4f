"""Two-way transformer of SAM's mask decoder: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.sam.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width (SAM's cross attention).

    Args:
        embedding_dim: width of queries, keys and values on entry and of the output.
        num_heads: heads; must divide `embedding_dim // downsample_rate`.
        downsample_rate: the projected (internal) width is `embedding_dim // downsample_rate`.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"{num_heads} heads do not divide the internal width {self.internal_dim}"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(
            1, 2
        )  # (B, nh, N, hd)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, Nq, C], k and v: [B, Nk, C] -> [B, Nq, C]. An input with batch 1 is shared
        by all B (projected once, then broadcast)."""
        q, k, v = (
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        )
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, Nq, hd)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """One decoder layer: token self-attention, token->image cross-attention, token MLP,
    image->token cross-attention; each followed by a residual add and a LayerNorm.

    Args:
        embedding_dim: token width.
        num_heads: heads in every attention.
        mlp_dim: hidden width of the token MLP.
        activation: activation of the token MLP.
        attention_downsample_rate: width reduction inside the two cross attentions.
        skip_first_layer_pe: in the self-attention, use the tokens without their positional
            embedding and without a residual (the first layer, where tokens *are* the prompts).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries/query_pe: [B, Nt, C] tokens; keys/key_pe: [B, h*w, C] image tokens."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        k = keys + key_pe  # the keys do not change until the last step: add their pe once
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of `TwoWayAttentionBlock`s plus a final token->image attention.

    Args:
        depth: number of two-way layers.
        embedding_dim: token and image-embedding width.
        num_heads: heads in every attention.
        mlp_dim: hidden width of the token MLPs.
        activation: activation of the token MLPs.
        attention_downsample_rate: width reduction inside the cross attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth, self.embedding_dim = depth, embedding_dim
        self.num_heads, self.mlp_dim = num_heads, mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding [B or 1, C, h, w], image_pe [1, C, h, w]; point_embedding [B, Nt, C].

        Returns the processed tokens [B, Nt, C] and image tokens [B, h*w, C]. One image
        embedding shared by all B prompts (segment everything, a predictor) is projected once
        in the first layer; the image tokens become per-prompt at its image->token attention.
        """
        # contiguous token layout once, so no Linear below copies a transposed view
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # [B, h*w, C]
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # [B or 1, h*w, C]
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
