"""The graphs of `sam-export CKPT --format onnx --out DIR` (the folder: sam_train.weights.onnx_folder).

DIR/encoder.onnx      images [B, 3, S, S] (normalised, padded; see preprocess.json)
                      -> image_embeddings [B, C, S/p, S/p]
DIR/decoder.onnx      segment-anything's decoder interface, the one annotation tools and
                      browser demos call:
                        image_embeddings [1, C, h, w], point_coords [1, N, 2] (x, y in the
                        resized S-frame), point_labels [1, N] (1 fg, 0 bg, -1 padding, 2 / 3
                        box corners), mask_input [1, 1, 4h, 4w], has_mask_input [1],
                        orig_im_size [2] (h, w)
                      -> masks [1, 4, H, W] logits at orig_im_size, iou_predictions [1, 4],
                        low_res_masks [1, 4, 4h, 4w]   (mask 0: the single-mask output)
DIR/decoder_quantized.onnx   (--quantize) the decoder with int8 dynamically quantised weights
DIR/preprocess.json   how to turn an RGB image into the encoder input, and points into the
                      decoder's frame
DIR/anylabeling/      encoder.onnx, decoder.onnx, model.yaml: the graphs AnyLabeling and
                      X-AnyLabeling load as they are ("Load custom model" -> model.yaml)
DIR/osam/             encoder.onnx, decoder.onnx for osam (labelme's engine); see
                      sam_train.weights.osam_model (sam_train.weights.onnx_tools: the details)

Graphs come from torch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`), the
method of segment-anything's own export script. torch 2.14's default, the dynamo exporter,
gives the same graphs but is many times slower to export; the TorchScript exporter is
deprecated upstream but present in every torch this package admits (< 2.15), and its opset 17
loads in the older onnxruntime builds that annotation tools bundle.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from sam_train.models.sam.sam import Sam

OPSET = 17
DECODER_INPUTS = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]


def model_image_size(sam: Sam) -> int:
    """S: side of the square the model's prompts and embeddings refer to. Read from the prompt
    encoder, so that any image encoder mapping [B, 3, S, S] to the embedding exports."""
    return int(sam.prompt_encoder.input_image_size[0])


class OnnxEncoder(nn.Module):
    """The image encoder alone: normalised padded images -> embeddings."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)  # [B, 3, S, S] -> [B, C, h, w]


class OnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + mask upscaling behind the official decoder interface.

    Points carry every prompt (a box is two points labelled 2 and 3; a points-only prompt ends
    in a padding point (0, 0) labelled -1); `has_mask_input` switches the mask prompt on (1)
    or to the learned "no mask" embedding (0), so one graph serves every prompt kind.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam
        self.image_size = model_image_size(sam)

    def _resized_hw(self, orig_im_size: torch.Tensor) -> torch.Tensor:
        """The image's size after resizing its long side to S (before padding): int64 [2]."""
        size = orig_im_size.to(torch.float32)
        return torch.floor(size * (self.image_size / size.max()) + 0.5).to(torch.int64)

    def low_res_masks(
        self,
        image_embeddings: torch.Tensor,  # [1, C, h, w]
        point_coords: torch.Tensor,  # [1, N, 2] (x, y) in the resized S-frame
        point_labels: torch.Tensor,  # [1, N]
        mask_input: torch.Tensor,  # [1, 1, 4h, 4w]
        has_mask_input: torch.Tensor,  # [1]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask outputs at low resolution [1, 4, 4h, 4w] and their IoU [1, 4]."""
        pe = self.sam.prompt_encoder
        sparse = pe._embed_points(
            point_coords, point_labels, pad=False, input_size=(self.image_size,) * 2
        )  # [1, N, C]
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        return self.sam.mask_decoder.predict_masks(
            image_embeddings, pe.get_dense_pe(), sparse, dense
        )

    def upscale(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits [1, m, 4h, 4w] -> [1, m, H, W] at orig_im_size (padding cropped)."""
        full = F.interpolate(low_res, size=(self.image_size,) * 2, mode="bilinear")
        resized = self._resized_hw(orig_im_size)
        full = full[..., : resized[0], : resized[1]]
        orig = orig_im_size.to(torch.int64)
        return F.interpolate(full, size=(orig[0], orig[1]), mode="bilinear")

    def forward(
        self,
        image_embeddings: torch.Tensor,  # [1, C, h, w]
        point_coords: torch.Tensor,  # [1, N, 2]
        point_labels: torch.Tensor,  # [1, N]
        mask_input: torch.Tensor,  # [1, 1, 4h, 4w]
        has_mask_input: torch.Tensor,  # [1]
        orig_im_size: torch.Tensor,  # [2]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low_res, iou = self.low_res_masks(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )  # [1, 4, 4h, 4w], [1, 4]
        return self.upscale(low_res, orig_im_size), iou, low_res


def decoder_example_inputs(sam: Sam, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Inputs of the decoder interface for a model of `sam`'s shape (the export's trace)."""
    size = model_image_size(sam)
    grid = sam.prompt_encoder.image_embedding_size[0]
    dim = sam.prompt_encoder.embed_dim
    g = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, dim, grid, grid, generator=g),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=g).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=g).float(),
        "mask_input": torch.randn(1, 1, 4 * grid, 4 * grid, generator=g),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([0.75 * size, size]),
    }


def _normalisation(pixel_norm: str) -> dict:
    """preprocess.json's description of `Sam.pixel_norm`."""
    if pixel_norm == "min_max":  # LiteMedSAM-family
        return {
            "pixel_norm": pixel_norm,
            "normalize": "(pixel - min) / max(max - min, 1e-8), min and max over every pixel "
            "and channel of the resized image (0-255 units), giving [0, 1]",
        }
    return {
        "pixel_norm": pixel_norm,
        "pixel_scale": 1 / 255,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "normalize": "(pixel * pixel_scale - mean) / std per RGB channel",
    }


def preprocessing(sam: Sam) -> dict:
    """What a runtime does to an RGB image and to prompts before calling the two graphs."""
    return {
        "image_size": model_image_size(sam),
        "resize": "scale the longer side to image_size (bilinear), keep the aspect ratio; "
        "new side = floor(side * image_size / longer_side + 0.5)",
        **_normalisation(sam.pixel_norm),
        "padding": {"side": "bottom-right", "value": 0.0, "after": "normalize"},
        "layout": "NCHW float32",
        "point_coords": "multiply (x, y) pixels of the original image by the resize scale; "
        "add a padding point (0, 0) with label -1 when no box is given; a box is two points "
        "(x0, y0) label 2 and (x1, y1) label 3",
        "mask_threshold": sam.mask_threshold,
        "embedding_shape": [
            sam.prompt_encoder.embed_dim,
            *sam.prompt_encoder.image_embedding_size,
        ],
    }


def export_graph(module: nn.Module, args: tuple, path: Path, **kwargs) -> None:
    """`module` traced at `args` into `path` with the exporter and opset named above."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings, none actionable here
        torch.onnx.export(module, args, str(path), opset_version=OPSET, dynamo=False, **kwargs)


def export_encoder(sam: Sam, path: Path) -> Path:
    """encoder.onnx: images [B, 3, S, S] -> image_embeddings [B, C, h, w]."""
    size = model_image_size(sam)
    export_graph(
        OnnxEncoder(sam).eval(),
        (torch.zeros(1, 3, size, size),),
        path,
        input_names=["images"],
        output_names=["image_embeddings"],
        dynamic_axes={"images": {0: "batch"}, "image_embeddings": {0: "batch"}},
    )
    return path


def export_decoder(sam: Sam, path: Path) -> Path:
    """decoder.onnx with the official interface; the number of points is dynamic."""
    inputs = decoder_example_inputs(sam)
    export_graph(
        OnnxDecoder(sam).eval(),
        tuple(inputs.values()),
        path,
        input_names=DECODER_INPUTS,
        output_names=DECODER_OUTPUTS,
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    return path


def quantize_decoder(src: Path, dst: Path) -> Path:
    """Weights of the matrix multiplications as int8, activations quantised on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" hint
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    finally:
        root.setLevel(level)
    return dst
