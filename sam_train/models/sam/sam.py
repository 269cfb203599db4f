"""SAM assembly: image encoder + prompt encoder + mask decoder, and size-named builders.

`Sam.embed_images` runs the heavy encoder once per image; `Sam.decode` predicts masks for K
prompts that index into those embeddings (`image_index`), so one embedding serves every mask
and every interactive round. Nothing here is wrapped in `torch.no_grad`; prompt simulation and
losses live in `sam_train.training` and `sam_train.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.pixels import check_pixel_norm
from sam_train.models.sam.image_encoder import ImageEncoderViT
from sam_train.models.sam.mask_decoder import MaskDecoder
from sam_train.models.sam.prompt_encoder import PromptEncoder
from sam_train.models.sam.transformer import TwoWayTransformer
from sam_train.models.tiny_vit import TinyViT


class Sam(nn.Module):
    """Promptable segmenter.

    Args:
        image_encoder: images [B, 3, S, S] -> embeddings [B, C, S/s, S/s] (s its
            `embedding_stride`: the patch, over the neck's upsampling).
        prompt_encoder: points / boxes / mask logits / text -> sparse and dense embeddings.
        mask_decoder: embeddings -> low-res mask logits and predicted IoU.
    """

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.architecture: dict = {}  # builder arguments, stored with exported weights

    @property
    def pixel_norm(self) -> str:
        """How this model's input images are normalised (`sam_train.models.pixels`)."""
        return self.architecture.get("pixel_norm", "imagenet")

    @property
    def mask_threshold(self) -> float:
        return 0.0

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides 1-D ones: positional tables and
        learned token / prompt embeddings."""
        tables = (
            "pos_embed",
            "rel_pos_h",
            "rel_pos_w",
            "_embed",
            "embeddings.",
            "_token",
            "attention_biases",  # TinyViT's per-offset attention biases
        )
        return {n for n, _ in self.named_parameters() if any(t in n for t in tables)}

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> image embeddings [B, C, S/p, S/p]."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        multimask_output: bool | None = True,
        image_index: torch.Tensor | None = None,
        pad_points: bool | None = None,
        text_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for K prompts on B embedded images.

        Args:
            image_embeddings: [B, C, h, w] from `embed_images`.
            points: coords [K, N, 2] (x, y) in input pixels, labels [K, N] (1 fg, 0 bg,
                -1 padding, 2 / 3 box corners).
            boxes: [K, 4] xyxy in input pixels.
            mask_inputs: low-res mask logits [K, 1, 4h, 4w] (e.g. the previous round's).
            text_embeds: [K, T, E_text] (needs a prompt encoder with text_embed_dim = E_text).
            multimask_output: True -> 3 masks, False -> 1, None -> all 4 (single-mask first).
            image_index: [K] long, the image each prompt belongs to; None when B == K or B == 1.
            pad_points: see `PromptEncoder.forward`.
            text_valid: [K] bool, which prompts' text token is real (others become padding).

        Returns:
            low-res mask logits [K, m, 4h, 4w] and predicted IoU [K, m].
        """
        grid_hw = tuple(image_embeddings.shape[-2:])
        sparse, dense = self.prompt_encoder(
            points,
            boxes,
            mask_inputs,
            text_embeds,
            pad_points=pad_points,
            grid_hw=grid_hw,
            text_valid=text_valid,
        )  # [K, N', C], [K, C, h, w]
        k = sparse.shape[0]
        if image_index is not None:
            image_embeddings = image_embeddings.index_select(0, image_index)  # [K, C, h, w]
        elif image_embeddings.shape[0] not in (1, k):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings for {k} prompts: pass image_index"
            )
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(grid_hw),
            sparse,
            dense,
            multimask_output,
        )

    def forward(self, images: torch.Tensor, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode(embed_images(images), **prompts)`; prompts as in `decode`."""
        return self.decode(self.embed_images(images), **prompts)


def upscale_logits(low_res_logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Low-res logits [K, m, 4h, 4w] -> [K, m, S, S] by bilinear interpolation (SAM's postprocess)."""
    return F.interpolate(low_res_logits, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# sizes and builders


@dataclass(frozen=True)
class SamSize:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]


SAM_SIZES: dict[str, SamSize] = {
    "tiny": SamSize(192, 12, 3, (2, 5, 8, 11)),
    "b": SamSize(768, 12, 12, (2, 5, 8, 11)),
    "l": SamSize(1024, 24, 16, (5, 11, 17, 23)),
    "h": SamSize(1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam(
    encoder_embed_dim: int = 768,
    encoder_depth: int = 12,
    encoder_num_heads: int = 12,
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    use_rel_pos: bool = True,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    drop_path_rate: float = 0.0,
    text_embed_dim: int = 0,
    decoder_depth: int = 2,
    decoder_num_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    pixel_norm: str = "imagenet",
    neck_upsample: int = 1,
) -> Sam:
    """Build a SAM from plain arguments (a Hydra `_target_`); defaults are ViT-B at 1024 px.

    `use_rel_pos=False` leaves out the encoder's relative-position tables: the encoder is then
    exactly the plain ViT an MAE trains, so a frozen stage-1 encoder has no new tensors inside
    its blocks (only the neck is new). `pixel_norm`: how images are normalised for this model
    (`sam_train.models.pixels.PIXEL_NORMS`), recorded with the architecture. `neck_upsample`
    (1, 2, 4) multiplies the embedding grid after the neck (`ImageEncoderViT`): the prompt
    encoder is built for the grid image_size / patch_size * neck_upsample.
    """
    args = dict(locals())
    args["encoder_global_attn_indexes"] = [int(i) for i in encoder_global_attn_indexes]
    check_pixel_norm(pixel_norm)
    image_encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=encoder_embed_dim,
        depth=encoder_depth,
        num_heads=encoder_num_heads,
        out_chans=prompt_embed_dim,
        window_size=window_size,
        global_attn_indexes=tuple(args["encoder_global_attn_indexes"]),
        use_rel_pos=use_rel_pos,
        drop_path_rate=drop_path_rate,
        neck_upsample=neck_upsample,
    )
    sam = Sam(image_encoder, *_prompt_parts(args, image_size // image_encoder.embedding_stride))
    sam.architecture = args
    return sam


def _prompt_parts(args: dict, grid: int) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder for a builder's arguments and embedding grid."""
    prompt_encoder = PromptEncoder(
        embed_dim=args["prompt_embed_dim"],
        image_embedding_size=(grid, grid),
        input_image_size=(args["image_size"], args["image_size"]),
        mask_in_chans=args["mask_in_chans"],
        text_embed_dim=args["text_embed_dim"],
    )
    mask_decoder = MaskDecoder(
        transformer_dim=args["prompt_embed_dim"],
        transformer=TwoWayTransformer(
            depth=args["decoder_depth"],
            embedding_dim=args["prompt_embed_dim"],
            num_heads=args["decoder_num_heads"],
            mlp_dim=args["decoder_mlp_dim"],
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=args["iou_head_hidden_dim"],
    )
    return prompt_encoder, mask_decoder


def build_tiny_vit_sam(
    image_size: int = 1024,
    stem_stride: int = 4,
    embed_dims: Sequence[int] = (64, 128, 160, 320),
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (2, 4, 5, 10),
    window_sizes: Sequence[int] = (7, 7, 14, 7),
    mlp_ratio: float = 4.0,
    mbconv_expand_ratio: float = 4.0,
    local_conv_size: int = 3,
    drop_path_rate: float = 0.0,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    text_embed_dim: int = 0,
    decoder_depth: int = 2,
    decoder_num_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    pixel_norm: str = "imagenet",
) -> Sam:
    """A SAM on MobileSAM's TinyViT encoder (a Hydra `_target_`); defaults are MobileSAM's
    (1024 px, ImageNet mean/std). LiteMedSAM: `image_size=256, stem_stride=1,
    pixel_norm="min_max"`. Arguments as `TinyViT` and `build_sam`."""
    args = dict(locals())
    for key in ("embed_dims", "depths", "num_heads", "window_sizes"):
        args[key] = [int(v) for v in args[key]]
    check_pixel_norm(pixel_norm)
    image_encoder = TinyViT(
        img_size=image_size,
        stem_stride=stem_stride,
        embed_dims=args["embed_dims"],
        depths=args["depths"],
        num_heads=args["num_heads"],
        window_sizes=args["window_sizes"],
        mlp_ratio=mlp_ratio,
        mbconv_expand_ratio=mbconv_expand_ratio,
        local_conv_size=local_conv_size,
        drop_path_rate=drop_path_rate,
        out_chans=prompt_embed_dim,
    )
    sam = Sam(image_encoder, *_prompt_parts(args, image_size // image_encoder.embedding_stride))
    sam.architecture = {"encoder": "tiny_vit", **args}
    return sam


BUILDERS = {"vit": build_sam, "tiny_vit": build_tiny_vit_sam}


def build_from_architecture(architecture: dict) -> Sam:
    """The SAM an architecture record describes (`Sam.architecture`, as exports store it):
    `encoder` names the builder (`vit` when absent), the other keys are its arguments."""
    args = dict(architecture)
    encoder = args.pop("encoder", "vit")
    if encoder not in BUILDERS:
        raise ValueError(f"unknown SAM image encoder {encoder!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[encoder](**args)


def build_sam_vit(size: str, **overrides) -> Sam:
    """Build a named size ('tiny', 'b', 'l', 'h'); keyword overrides go to `build_sam`."""
    if size not in SAM_SIZES:
        raise ValueError(f"unknown SAM size {size!r}; choose one of {sorted(SAM_SIZES)}")
    s = SAM_SIZES[size]
    kwargs = dict(
        encoder_embed_dim=s.encoder_embed_dim,
        encoder_depth=s.encoder_depth,
        encoder_num_heads=s.encoder_num_heads,
        encoder_global_attn_indexes=s.encoder_global_attn_indexes,
    )
    kwargs.update(overrides)
    return build_sam(**kwargs)
