"""SAMI (EfficientSAM): a masked autoencoder whose decoder predicts a teacher's features.

The same masking, encoder and decoder as `MaskedAutoencoder`; only the head and the target
differ. The decoder's last linear layer projects to the teacher's width D_t, and the target
is the teacher SAM's image-encoder output before the neck, [B, D_t, h_t, w_t], resampled
(bilinear) to the student's patch grid when the two grids differ. Plain PyTorch: the teacher
runs elsewhere (`sam_train.models.teacher`) and its features are passed in.

Loss: mean squared error per token over `loss_tokens` ("all": masked and visible tokens, as
EfficientSAM; "masked" or "visible" alone), against per-token normalised features when
`norm_target` (mean 0, variance 1 over the channels of each token: the teacher's scale, which
differs between layers and checkpoints, does not set the loss scale).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.mae import MaskedAutoencoder, check_mask_ratio

LOSS_TOKENS = ("all", "masked", "visible")


class SamiModel(MaskedAutoencoder):
    """Masked autoencoder that reconstructs teacher features.

    Args:
        target_dim: the teacher's feature width D_t (the decoder's output width).
        loss_tokens: which tokens are scored: "all", "masked" or "visible".
        norm_target: normalise each target token over its channels (LayerNorm without affine).
        **mae_args: `MaskedAutoencoder` arguments (`norm_pix_loss` has no effect here).
    """

    def __init__(
        self,
        target_dim: int,
        loss_tokens: str = "all",
        norm_target: bool = True,
        **mae_args,
    ) -> None:
        super().__init__(**mae_args)
        if loss_tokens not in LOSS_TOKENS:
            raise ValueError(f"loss_tokens must be one of {LOSS_TOKENS}, got {loss_tokens!r}")
        self.target_dim = target_dim
        self.loss_tokens = loss_tokens
        self.norm_target = norm_target
        # the linear projection from the decoder width to the teacher's width
        self.decoder_pred = nn.Linear(self.decoder_embed.out_features, target_dim)
        nn.init.xavier_uniform_(self.decoder_pred.weight)
        nn.init.zeros_(self.decoder_pred.bias)

    def feature_targets(
        self, teacher_features: torch.Tensor, grid_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Teacher map [B, D_t, h_t, w_t] -> per-token targets [B, L, D_t] on the student grid."""
        if tuple(teacher_features.shape[-2:]) != tuple(grid_hw):
            teacher_features = F.interpolate(
                teacher_features.float(), size=grid_hw, mode="bilinear", align_corners=False
            )
        target = teacher_features.float().flatten(2).transpose(1, 2)  # [B, L, D_t]
        if self.norm_target:
            target = F.layer_norm(target, target.shape[-1:], eps=1e-6)
        return target

    def token_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] weights of the scored tokens from the MAE mask (1 = masked)."""
        if self.loss_tokens == "masked":
            return mask
        if self.loss_tokens == "visible":
            return 1.0 - mask
        return torch.ones_like(mask)

    def forward_feature_loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error over the scored tokens; pred, target [B, L, D_t], mask [B, L]."""
        per_token = ((pred - target) ** 2).mean(dim=-1)  # [B, L]
        weights = self.token_weights(mask)
        return (per_token * weights).sum() / weights.sum().clamp_min(1.0)

    def forward(  # type: ignore[override]
        self,
        imgs: torch.Tensor,
        teacher_features: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs [B, 3, H, W], teacher_features [B, D_t, h_t, w_t] -> (loss, pred [B, L, D_t],
        mask [B, L], 1 = masked)."""
        ratio = self.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        latent, mask, ids_restore, grid_hw = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid_hw)
        target = self.feature_targets(teacher_features, grid_hw)
        return self.forward_feature_loss(pred, target, mask), pred, mask
