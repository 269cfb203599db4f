"""A SAM used as a teacher: frozen, in eval mode, run without autograd.

Any SAM `load_sam` reads is a teacher (our checkpoints and exports, the official
segment-anything files). It gives two targets:

- `features`: the image encoder's output before the neck, [B, D_t, h, w] (what EfficientSAM's
  SAMI reconstructs);
- `embeddings`: the image embeddings after the neck, [B, C, h, w] (what MobileSAM distils).

Images arrive normalised at the student's input size (ImageNet mean / std: every student here);
the teacher sees them resized to its own, and renormalised when it takes another normalisation
(LiteMedSAM's per-image min-max, taken over the whole padded square: padding counts as the
ImageNet mean colour, so on a padded image the stretch is slightly narrower than the predictor's).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.pixels import denormalise_pixels, normalise_pixels
from sam_train.models.sam.sam import Sam

STUDENT_PIXEL_NORM = "imagenet"


class SamTeacher(nn.Module):
    """A frozen SAM whose image encoder supplies training targets.

    Args:
        sam: the teacher model; its parameters are frozen here and it stays in eval mode
            whatever `train()` is called with.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> SamTeacher:
        return super().train(False)  # dropout / drop path never switch on

    @property
    def input_size(self) -> int:
        return self.sam.image_encoder.img_size

    @property
    def patch_size(self) -> int:
        """Input pixels per embedding cell (a ViT's patch over its neck's upsampling)."""
        return self.sam.image_encoder.embedding_stride

    @property
    def grid(self) -> int:
        """Side of the embedding grid at the teacher's input size."""
        return self.input_size // self.patch_size

    @property
    def feature_dim(self) -> int:
        """Width of the pre-neck features (the ViT width)."""
        return self.sam.image_encoder.embed_dim

    @property
    def embedding_dim(self) -> int:
        """Channels of the image embeddings (the prompt width)."""
        return self.sam.image_encoder.out_chans

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] at the student's size and normalisation -> [B, 3, T, T] at the
        teacher's."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.sam.pixel_norm != STUDENT_PIXEL_NORM:
            rgb = denormalise_pixels(images, STUDENT_PIXEL_NORM) * 255  # [B, 3, T, T], 0-255
            images = normalise_pixels(rgb, self.sam.pixel_norm)
        return images

    @torch.inference_mode()
    def _run(self, images: torch.Tensor, before_neck: bool) -> torch.Tensor:
        x = self.teacher_input(images)
        encoder = self.sam.image_encoder
        return encoder.forward_grid(x) if before_neck else encoder(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-neck encoder output [B, D_t, h, w]; a normal tensor, usable in a loss."""
        return self._run(images, before_neck=True).clone()

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, C, h, w] after the neck; a normal tensor, usable in a loss."""
        return self._run(images, before_neck=False).clone()


@functools.lru_cache(maxsize=2)
def load_teacher(path: str) -> SamTeacher:
    """The teacher in `path`, loaded once per process: the model builder (which needs its
    width or its decoder) and the training module share one copy."""
    from sam_train.weights.sam_loading import load_sam

    return SamTeacher(load_sam(Path(path)))
