"""Stage-1 picture: original | masked input | reconstruction | reconstruction with the visible
patches pasted back, one row per image, with column labels and a title.

The reconstruction is the model's own. With normalised-pixel targets (`norm_pix_loss`) the
model predicts each patch's pixels up to that patch's mean and contrast, which it is never
told; un-normalising a hidden patch with its own statistics would paint the hidden image's
coarse structure for free (a model that predicts zeros would "reconstruct" it). Here every
predicted patch is un-normalised with statistics of the image's *visible* patches only, so
a zero prediction draws a flat colour and all structure in the masked area comes from the model.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_train.data.transforms import denormalise
from sam_train.models.mae import MaskedAutoencoder, patch_stats
from sam_train.viz.labels import column_labels, save_caption, save_png, stack_rows, text_bar

__all__ = ["CAPTION", "mae_reconstruction_grid", "save_caption", "save_png", "visible_pixels"]

COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")
CAPTION = """
Stage-1 (MAE) reconstructions of held-out validation photos, with fixed validation masks.
Columns: original | masked input (grey = hidden patches) | the decoder's prediction for every
patch | the prediction in the hidden patches with the visible patches pasted back.
With normalised-pixel targets (model.norm_pix_loss=true) the model predicts each patch up to its
mean and contrast; the prediction is drawn with the mean colour and contrast of the image's
visible patches only, never with a hidden patch's own statistics: a model that predicts zeros
shows flat grey-brown squares, and every shape inside the hidden area is the model's.
"""


def visible_pixels(
    model: MaskedAutoencoder, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Predicted patches in the input's (normalised) pixel space, [N, L, p*p*C].

    Without `norm_pix_loss` the prediction already is pixels. With it, each patch is
    un-normalised by the per-channel mean and the mean patch contrast (std) of the image's
    visible patches (`mask` [N, L], 1 = hidden): statistics the model could know.
    """
    if not model.norm_pix_loss:
        return pred
    patches = model.patchify(images)  # [N, L, p*p*C], pixels (p, q, c) inside a patch
    n, length, _ = patches.shape
    c = model.in_chans
    visible = (1 - mask.float())[..., None]  # [N, L, 1]
    count = visible.sum(dim=1).clamp_min(1)  # [N, 1]
    channel_mean = (patches.reshape(n, length, -1, c).mean(dim=2) * visible).sum(1) / count
    _, _, std = patch_stats(patches)  # [N, L, 1]
    contrast = (std * visible).sum(dim=1) / count  # [N, 1]
    out = pred.reshape(n, length, -1, c) * contrast[:, None, None] + channel_mean[:, None, None]
    return out.reshape(pred.shape)


@torch.no_grad()
def mae_reconstruction_grid(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    title: str = "",
) -> np.ndarray:
    """One row per image, four labelled columns, `title` on top; RGB uint8 [H', 4*W, 3].

    images: [B, 3, H, W] normalised; noise: [B, L] masking noise (fixed masks between epochs).
    """
    was_training = model.training
    model.eval()
    _, pred, mask = model(images, noise=noise)
    model.train(was_training)
    grid_hw = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    recon = model.unpatchify(visible_pixels(model, images, pred, mask), grid_hw)  # [B, 3, H, W]
    pixel_mask = model.unpatchify(
        mask.unsqueeze(-1).expand(-1, -1, model.patch_size**2 * model.in_chans), grid_hw
    )  # [B, 3, H, W], 1 where masked
    original = denormalise(images)
    masked = original * (1 - pixel_mask) + 0.5 * pixel_mask
    recon = denormalise(recon).clamp(0, 1)
    pasted = original * (1 - pixel_mask) + recon * pixel_mask
    panels = torch.stack([original, masked, recon, pasted], dim=1)  # [B, 4, 3, H, W]
    b, p, c, h, w = panels.shape
    grid = panels.permute(0, 3, 1, 4, 2).reshape(b * h, p * w, c)
    grid = (grid.float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    ratio = f"{float(mask.float().mean()):.0%} of patches hidden"
    header = column_labels([w] * p, [COLUMNS[0], f"masked input ({ratio})", *COLUMNS[2:]])
    rows = [text_bar(p * w, title)] if title else []
    return stack_rows([*rows, header, grid])
