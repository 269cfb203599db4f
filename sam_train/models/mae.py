"""Masked autoencoder (He et al., 2021) on the shared ViT backbone.

Plain PyTorch: `MaskedAutoencoder(...)(imgs)` returns `(loss, pred, mask)`. Argument names and
parameter names follow the official MAE code, so its checkpoints load by dropping a prefix.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sam_train.models.pos_embed import resize_grid_embed, sincos_2d
from sam_train.models.vit import Block, VisionTransformer


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample by sorting noise.

    x: [N, L, D]; noise: [N, L] (the lowest values are kept). Returns the kept tokens
    [N, len_keep, D], the mask [N, L] (0 = kept, 1 = removed) in the original order, and
    ids_restore [N, L] that puts a [kept | removed] sequence back in the original order.
    """
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    elif noise.shape != (n, length):
        raise ValueError(f"noise must be [N, L] = {(n, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore


class MaskedAutoencoder(nn.Module):
    """ViT masked autoencoder.

    Args:
        img_size, patch_size, in_chans: input geometry.
        embed_dim, depth, num_heads: encoder (a `VisionTransformer` with a class token and
            fixed sin-cos positions).
        decoder_embed_dim, decoder_depth, decoder_num_heads: the lightweight decoder.
        mlp_ratio: MLP hidden width / token width, encoder and decoder.
        norm_pix_loss: regress per-patch normalised pixels (mean 0, var 1 per patch).
        mask_ratio: fraction of patches removed when `forward` is not given one.
        drop_path_rate: stochastic depth in the encoder.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_mask_ratio(mask_ratio)
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio

        # ---- encoder specifics
        self.encoder = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            class_token=True,
            pos_embed="sincos",
            drop_path_rate=drop_path_rate,
        )
        grid = self.encoder.grid_size

        # ---- decoder specifics
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + grid * grid, decoder_embed_dim), requires_grad=False
        )
        with torch.no_grad():
            self.decoder_pos_embed[0, 1:] = sincos_2d(decoder_embed_dim, grid, grid)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "encoder.cls_token", "mask_token", "decoder_pos_embed"}

    # ------------------------------------------------------------------------------------------
    # pixels <-> patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, p*p*C], patches row-major, pixels (p, q, c) inside a patch."""
        p, c = self.patch_size, self.in_chans
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[N, L, p*p*C] -> [N, C, H, W]; a square grid unless `grid_hw` says otherwise."""
        p, c = self.patch_size, self.in_chans
        if grid_hw is None:
            side = int(x.shape[1] ** 0.5)
            grid_hw = (side, side)
        h, w = grid_hw
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    # ------------------------------------------------------------------------------------------
    # the method: encoder, decoder, loss
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        x, grid_hw = self.encoder.embed(imgs)  # [N, L, D], positions added
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # [N, L_keep, D]
        x = self.encoder.prepend_cls(x)  # [N, 1 + L_keep, D]
        x = self.encoder.forward_blocks(x)  # visible tokens only: global attention, no grid
        return x, mask, ids_restore, grid_hw

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid_hw: tuple[int, int]
    ) -> torch.Tensor:
        x = self.decoder_embed(latent)  # [N, 1 + L_keep, Dd]
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # [N, L, Dd], kept first
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1)  # class token back in front
        x = x + self._decoder_pos(grid_hw)  # every token, mask tokens included
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # [N, 1 + L, p*p*C]
        return x[:, 1:]

    def _decoder_pos(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        grid = self.encoder.grid_size
        if grid_hw == (grid, grid):
            return self.decoder_pos_embed
        return resize_grid_embed(self.decoder_pos_embed, grid_hw, num_prefix_tokens=1)

    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder regresses: pixels, or per-patch normalised pixels. [N, L, p*p*C]."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            centred, _, std = patch_stats(target)
            target = centred / std
        return target

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error over the masked patches only."""
        per_patch = ((pred - self.patch_targets(imgs)) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs [N, C, H, W] -> (loss, pred [N, L, p*p*C], mask [N, L], 1 = masked)."""
        ratio = self.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        latent, mask, ids_restore, grid_hw = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid_hw)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def pred_to_pixels(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted patches back in the input's pixel space: [N, L, p*p*C].

        With normalised-pixel targets each patch is un-normalised with the statistics of the
        same patch of the input, so a reconstruction shows real colours.
        """
        if not self.norm_pix_loss:
            return pred
        _, mean, std = patch_stats(self.patchify(imgs))
        return pred * std + mean


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch statistics of [N, L, P] pixels: (patches - mean, mean, std), the std unbiased
    with 1e-6 added to the variance (the MAE recipe). The centred values are computed anyway
    (returned), so the variance sums their squares instead of calling `Tensor.var`."""
    mean = patches.mean(dim=-1, keepdim=True)
    centred = patches - mean
    var = centred.square().sum(dim=-1, keepdim=True) / (patches.shape[-1] - 1)
    return centred, mean, (var + 1.0e-6).sqrt()


def check_mask_ratio(mask_ratio: float) -> float:
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(
            f"mask_ratio must lie strictly between 0 and 1 (the paper uses 0.75), got {mask_ratio}"
        )
    return float(mask_ratio)
