"""SAM's prompt encoder: points, boxes, low-res masks (and text tokens) -> embeddings.

Parameter names follow segment-anything, so its `prompt_encoder.*` weights load unchanged.
Point labels: 1 foreground, 0 background, -1 padding, and 2 / 3 for the top-left /
bottom-right corner of a box written as points (sam2's convention, lets one batch mix box
and point prompts).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from sam_train.models.sam.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Tancik et al., 2020).

    Args:
        num_pos_feats: frequencies; the encoding has 2 * num_pos_feats channels (sin, cos).
        scale: standard deviation of the Gaussian frequency matrix.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats)
        )

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] (x, y) in [0, 1] -> [..., 2 * num_pos_feats], always in float32
        (bf16 would quantise a position to about 1/256 of the image)."""
        with torch.autocast(coords.device.type, enabled=False):
            proj = (2 * coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float()
        proj = 2 * math.pi * proj
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an h x w grid: [C, h, w]."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """coords [B, N, 2] (x, y) in pixels of an image of `image_size` (h, w) -> [B, N, C]."""
        scale = coords_input.new_tensor([image_size[1], image_size[0]], dtype=torch.float32)
        return self._encode(coords_input.float() / scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for SAM's mask decoder.

    Args:
        embed_dim: prompt embedding width (256 in SAM).
        image_embedding_size: (h, w) of the image embedding.
        input_image_size: (H, W) of the padded image given to the image encoder, in pixels;
            point and box coordinates are in this frame.
        mask_in_chans: hidden channels of the mask-prompt conv stack (16 in SAM).
        activation: activation inside the mask-prompt conv stack.
        text_embed_dim: width of optional text embeddings; > 0 builds `text_proj`, a linear map
            to `embed_dim` whose outputs join the sparse tokens. 0 keeps the official layout.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_embed_dim: int = 0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # foreground / background point, box top-left / bottom-right corner
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_embed_dim = text_embed_dim
        self.text_proj = nn.Linear(text_embed_dim, embed_dim) if text_embed_dim > 0 else None

    # ------------------------------------------------------------------------------------------
    def _input_size(self, grid_hw: tuple[int, int] | None) -> tuple[int, int]:
        """Pixel frame of the prompts: the configured one, or scaled with a different grid."""
        if grid_hw is None or tuple(grid_hw) == self.image_embedding_size:
            return self.input_image_size
        stride_h = self.input_image_size[0] / self.image_embedding_size[0]
        stride_w = self.input_image_size[1] / self.image_embedding_size[1]
        return (round(grid_hw[0] * stride_h), round(grid_hw[1] * stride_w))

    def get_dense_pe(self, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Positional encoding of every image-embedding cell: [1, C, h, w]."""
        return self.pe_layer(tuple(grid_hw or self.image_embedding_size)).unsqueeze(0)

    def _embed_points(
        self, points: torch.Tensor, labels: torch.Tensor, pad: bool, input_size: tuple[int, int]
    ) -> torch.Tensor:
        """points [B, N, 2] (x, y) pixels, labels [B, N] -> [B, N (+1 if pad), C]."""
        points = points.float() + 0.5  # pixel centre
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, input_size)
        labels = labels[..., None]  # [B, N, 1]
        out = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        for value, table in enumerate(self.point_embeddings):
            out = out + (labels == value).to(out.dtype) * table.weight
        return out

    def _embed_boxes(self, boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """boxes [B, 4] xyxy pixels -> two corner tokens [B, 2, C]."""
        corners = (boxes.float() + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, input_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return pe + corner_embed  # [B, 2, C]

    def _batch_size(self, points, boxes, masks, text_embeds) -> int:
        for t in (points[0] if points is not None else None, boxes, masks, text_embeds):
            if t is not None:
                return t.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text_embeds: torch.Tensor | None = None,
        pad_points: bool | None = None,
        grid_hw: tuple[int, int] | None = None,
        text_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of B masks to predict.

        Args:
            points: coords [B, N, 2] (x, y) in input pixels and labels [B, N] (see module doc).
            boxes: [B, 4] xyxy in input pixels.
            masks: low-res mask logits [B, 1, 4h, 4w].
            text_embeds: [B, T, text_embed_dim], mapped by `text_proj` to T more sparse tokens.
            pad_points: append a padding point to `points`; None = the official rule (pad when
                no box is given).
            grid_hw: (h, w) of the image embedding when it differs from the configured size.
            text_valid: [B] or [B, T] bool; False turns that text token into the padding token
                (`not_a_point_embed`), so one batch mixes prompts with and without text.

        Returns:
            sparse [B, N', C] (points, box corners, text tokens) and dense [B, C, h, w].
        """
        bs = self._batch_size(points, boxes, masks, text_embeds)
        grid = tuple(grid_hw or self.image_embedding_size)
        input_size = self._input_size(grid)
        dev = self.no_mask_embed.weight.device
        sparse = [torch.empty(bs, 0, self.embed_dim, device=dev)]
        if points is not None:
            pad = boxes is None if pad_points is None else pad_points
            sparse.append(self._embed_points(points[0], points[1], pad, input_size))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes, input_size))
        if text_embeds is not None:
            if self.text_proj is None:
                raise ValueError("text_embeds given but the prompt encoder has text_embed_dim=0")
            # CLIP embeddings are unit vectors: scaled to unit variance per entry, the projected
            # token starts at the scale of the point and box tokens instead of ~sqrt(E) below
            text_tokens = self.text_proj(text_embeds * self.text_embed_dim**0.5)  # [B, T, C]
            if text_valid is not None:
                valid = text_valid.reshape(bs, -1, 1).to(torch.bool)  # [B, T or 1, 1]
                text_tokens = torch.where(valid, text_tokens, self.not_a_point_embed.weight)
            sparse.append(text_tokens)
        sparse_embeddings = torch.cat(sparse, dim=1)  # [B, N', C]

        if masks is not None:
            dense = self.mask_downscaling(masks)  # [B, C, h, w]
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *grid)
        return sparse_embeddings, dense
