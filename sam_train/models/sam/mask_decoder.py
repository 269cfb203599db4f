"""SAM's mask decoder: a two-way transformer over prompt tokens and the image embedding, then
hypernetwork MLPs that turn each mask token into a dot-product filter on an upscaled map.

Parameter names follow segment-anything (`iou_token`, `mask_tokens`, `output_upscaling`,
`output_hypernetworks_mlps`, `iou_prediction_head`), so its `mask_decoder.*` weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.sam.common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from an image embedding and prompt embeddings.

    Args:
        transformer_dim: channel width of the transformer (= prompt embedding width).
        transformer: the two-way transformer (`TwoWayTransformer`).
        num_multimask_outputs: masks predicted for an ambiguous prompt (3); one more token
            predicts the single mask.
        activation: activation in the upscaling stack.
        iou_head_depth: linear layers in the IoU head.
        iou_head_hidden_dim: hidden width of the IoU head.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        c = transformer_dim
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for K prompts.

        Args:
            image_embeddings: [K, C, h, w] (one per prompt) or [1, C, h, w] (shared by all).
            image_pe: [1, C, h, w] positional encoding of the embedding grid.
            sparse_prompt_embeddings: [K, N, C] point / box / text tokens.
            dense_prompt_embeddings: [K, C, h, w] mask-prompt embedding.
            multimask_output: True -> the 3 multimask outputs, False -> the single-mask output,
                None -> all outputs, the single-mask one first (training picks per prompt).

        Returns:
            low-res mask logits [K, m, 4h, 4w] and predicted IoU [K, m].
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        if multimask_output is None:
            return masks, iou_pred
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask outputs: logits [K, num_mask_tokens, 4h, 4w] and IoU [K, num_mask_tokens]."""
        k = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(k, -1, -1)
        tokens = torch.cat(
            [output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1
        )  # [K, 1 + M + N, C]

        src = image_embeddings + dense_prompt_embeddings  # [K, C, h, w] (broadcast if shared)
        if src.shape[0] != k:
            src = src.expand(k, -1, -1, -1)
        _, _, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)  # [K, Nt, C], [K, h*w, C]
        iou_token_out = hs[:, 0]  # [K, C]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]  # [K, M, C]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # [K, M, C/8]
        return self.masks_from_tokens(src, hyper_in, h, w), self.iou_prediction_head(iou_token_out)

    def masks_from_tokens(
        self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """`output_upscaling` of the image tokens [K, h*w, C], then the dot product with each
        mask token's filter `hyper_in` [K, M, C/8] -> mask logits [K, M, 4h, 4w].

        Same function as the [K, C, h, w] convolution stack of segment-anything (same
        parameters) in 0.4x its time: a 2x2 stride-2 transposed convolution is one Linear per
        input pixel producing its 4 output pixels, so the stack is two GEMMs, a fused LayerNorm
        and the activations on channels-last tensors. The pixels stay in blocked order until
        the last step reorders the few mask channels (`benchmarks/bench_sam.py --decoder`).
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        k = src.shape[0]
        x = F.linear(src, *_transposed_conv_as_linear(up1))  # [K, hw, (dy1, dx1, C/4)]
        x = x.reshape(k, 4 * h * w, up1.out_channels)  # pixels (i, j, dy1, dx1)
        x = act1(F.layer_norm(x, (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        x = F.linear(x, *_transposed_conv_as_linear(up2))  # [K, 4hw, (dy2, dx2, C/8)]
        x = act2(x.reshape(k, 16 * h * w, up2.out_channels))  # pixels (i, j, dy1, dx1, dy2, dx2)
        masks = x @ hyper_in.transpose(1, 2)  # [K, 16hw, M]
        m = masks.shape[-1]
        masks = masks.reshape(k, h, w, 2, 2, 2, 2, m)  # i, j, dy1, dx1, dy2, dx2, M
        return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(k, m, 4 * h, 4 * w)


def _transposed_conv_as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [4*out, in], bias [4*out]) of a Linear doing `conv` (2x2 kernel, stride 2) for one
    input pixel; output features ordered (dy, dx, channel)."""
    if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
        raise ValueError(f"expected a 2x2 stride-2 transposed convolution, got {conv}")
    weight = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels)  # [(dy,dx,out), in]
    return weight, conv.bias.repeat(4)
