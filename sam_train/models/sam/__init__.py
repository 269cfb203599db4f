"""Segment Anything on the shared ViT backbone (plain PyTorch)."""

from sam_train.models.sam.image_encoder import ImageEncoderViT
from sam_train.models.sam.mask_decoder import MaskDecoder
from sam_train.models.sam.prompt_encoder import PromptEncoder
from sam_train.models.sam.sam import SAM_SIZES, Sam, build_sam, build_sam_vit, upscale_logits
from sam_train.models.sam.transformer import TwoWayTransformer

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "SAM_SIZES",
    "Sam",
    "TwoWayTransformer",
    "build_sam",
    "build_sam_vit",
    "upscale_logits",
]
