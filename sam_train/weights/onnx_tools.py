"""The ONNX graphs annotation tools load as they are: AnyLabeling, X-AnyLabeling and osam.

These tools were written for segment-anything's 1024-px models exported with the
preprocessing inside the encoder. They differ from our official interface (encoder.onnx /
decoder.onnx) in three ways, which the graphs here absorb so that any model size works:

- the encoder gets the picture as the tool has it: float32 [H, W, 3] in 0-255, already resized
  by the tool (AnyLabeling warps it into a 684 x 1024 canvas). `ToolEncoder` resizes it to the
  model's square S with PIL's bilinear filter (what `SamPredictor` does), normalises it the
  model's way (`Sam.pixel_norm`) and pads.
- the decoder's points are in the tool's frame (the image resized so its long side is the
  tool's, 1024), `mask_input` is [1, 1, 256, 256] and `has_mask_input` may be -1 (osam).
  `ToolDecoder` rescales the points to the model's frame and the mask to its low-res size.
- the tools show `masks[0][0]`: `ToolDecoder` returns one mask, chosen the way
  segment-anything's ONNX export does with `return_single_mask` (the best of the three for one
  click plus padding; the single-mask output once there are 3 points or more).

osam resizes, normalises with the ImageNet mean / std and pads outside the graph; for a model
normalised another way (LiteMedSAM's min-max) `OsamMinMaxEncoder` undoes that inside the graph
and normalises the model's way.

Any encoder whose `Sam.embed_images` maps the normalised padded [B, 3, S, S] image to the
embedding works; nothing here reads the encoder's internals.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.onnx.operators import shape_as_tensor

from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from sam_train.models.sam.sam import Sam
from sam_train.weights.onnx_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    OnnxDecoder,
    OnnxEncoder,
    export_graph,
    model_image_size,
)

TOOL_FRAME = 1024  # long side of the frame AnyLabeling / X-AnyLabeling put points and images in
TOOL_MASK_INPUT = 256  # side of the low-res mask the tools pass (1024 / 4)


def resized_sides(hw: torch.Tensor, long_side: int) -> torch.Tensor:
    """(h, w) scaled so that the long side is `long_side`, rounded half up, as float64 [2]
    (the rule of `sam_train.predictor.resized_shape`, in float64 like Python's).

    Every tensor here and below stays at least 1-D: the ONNX exporter computes arithmetic on
    0-d tensors in float32, which would round these sizes and weights differently."""
    hw = hw.to(torch.float64)
    longest = torch.amax(hw, dim=0, keepdim=True)  # [1]
    return torch.floor(hw * (_f64(long_side) / longest) + 0.5)


def _f64(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


PIL_PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images (32 - 8 - 2)


def bilinear_taps(
    in_size: torch.Tensor, out_size: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear resize of one axis: for each of `rows` outputs the input pixels it reads,
    int64 [rows, K], and their fixed-point coefficients (integers, 2**22 = weight 1), float64
    [rows, K]; rows >= out_size get zero coefficients.

    PIL (Image.resize(..., BILINEAR)) weighs input pixel x for output pixel i with a triangle
    of half-width max(scale, 1) around the centre (i + 0.5) * scale, scale = in / out, and
    normalises each row; downscaling thus averages (anti-aliases) instead of sampling. The
    arithmetic follows PIL's order so that the rounded coefficients are PIL's.
    """
    scale = in_size.to(torch.float64) / out_size.to(torch.float64)  # [1]
    support = torch.clamp(scale, min=1.0)  # [1]
    i = torch.arange(rows, dtype=torch.float64)  # [rows]
    center = (i + 0.5) * scale  # [rows]
    first = torch.clamp(torch.floor(center - support + 0.5), min=0.0)  # [rows]
    num_taps = torch.floor(2 * support) + 2  # [1]: more than PIL's widest window
    x = first[:, None] + torch.arange(num_taps[0], dtype=torch.float64)[None, :]  # [rows, K]
    w = torch.clamp(1 - torch.abs((x - center[:, None] + 0.5) * (_f64(1.0) / support)), min=0)
    w = w * (x < in_size).to(torch.float64) * (i < out_size).to(torch.float64)[:, None]
    w = w / torch.clamp(w.sum(dim=1, keepdim=True), min=1e-12)
    index = torch.minimum(x, in_size.to(torch.float64) - 1).to(torch.int64)
    return index, torch.floor(w * _f64(2.0**PIL_PRECISION_BITS) + 0.5)


def _resample_8bit(
    x: torch.Tensor, index: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """One PIL resampling pass along the first axis of 8-bit values held in float64 [in, ...]
    -> [rows, ...]: fixed-point sum (exact in float64), round half up, clip to 0-255 (PIL
    keeps 8-bit images 8-bit after each pass). Gathering whole rows along the first axis keeps
    the copy contiguous."""
    taps = x.index_select(0, index.reshape(-1))  # [rows * K, ...]
    taps = taps.reshape(*index.shape, -1)  # [rows, K, rest]
    acc = torch.matmul(coefficients[:, None, :], taps)[:, 0]  # [rows, rest]
    acc = acc.reshape(index.shape[0], *x.shape[1:])  # [rows, ...]
    one = _f64(2.0**PIL_PRECISION_BITS)
    acc = torch.floor((acc + _f64(2.0 ** (PIL_PRECISION_BITS - 1))) / one)
    return torch.clamp(acc, 0.0, 255.0)


def _imagenet_255() -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet mean and std in 0-255 units, float32 [3, 1, 1] each (as `normalise_pixels`
    computes them)."""
    mean = (torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255).float()
    std = (torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255).float()
    return mean[:, None, None], std[:, None, None]


def min_max_inside(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Resized pixels float32 [3, S, S] in 0-255 with the picture where `inside` [S, S] is
    true -> (x - min) / (max - min), min and max over the picture's pixels, all channels
    together, 0 outside: `normalise_pixels(..., "min_max")` on the unpadded image, then the
    predictor's zero padding."""
    lo = torch.where(inside, x, torch.full_like(x, float("inf"))).min()
    hi = torch.where(inside, x, torch.full_like(x, float("-inf"))).max()
    return (x - lo) / torch.clamp(hi - lo, min=1e-8) * inside.to(x.dtype)


class ToolEncoder(nn.Module):
    """image [H, W, 3] float 0-255 (any size) -> image_embeddings [1, C, h, w].

    The picture is resized so its long side is S (PIL's bilinear, horizontal pass then vertical,
    8-bit after each), normalised as the model was trained (`Sam.pixel_norm`: the ImageNet mean
    / std, or min-max over the resized picture) and zero-padded bottom-right:
    `SamPredictor.set_image` inside the graph.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam
        self.image_size = model_image_size(sam)
        self.pixel_norm = sam.pixel_norm
        mean, std = _imagenet_255()
        self.register_buffer("mean", mean, persistent=False)  # [3, 1, 1]
        self.register_buffer("std", std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        hw = shape_as_tensor(image)[:2]  # int64 [2]
        new_hw = resized_sides(hw, s)  # float64 [2]
        x = torch.clamp(torch.floor(image + 0.5), 0.0, 255.0).to(torch.float64)  # 8-bit values
        x = x.transpose(0, 1)  # [W, H, 3]: each pass resamples the first axis
        x = _resample_8bit(x, *bilinear_taps(hw[1:2], new_hw[1:2], s))  # [S, H, 3]
        x = x.transpose(0, 1)  # [H, S, 3]; horizontal pass first, as PIL
        x = _resample_8bit(x, *bilinear_taps(hw[0:1], new_hw[0:1], s))  # [S, S, 3]
        x = x.permute(2, 0, 1).to(torch.float32)  # [3, S, S], 0 beyond the resized picture
        idx = torch.arange(s, dtype=torch.float64)
        inside = (idx[:, None] < new_hw[0:1]) & (idx[None, :] < new_hw[1:2])  # [S, S]
        if self.pixel_norm == "min_max":
            x = min_max_inside(x, inside)
        else:  # padding is 0 after normalising, as in the predictor
            x = (x - self.mean) / self.std * inside.to(x.dtype)
        return self.sam.embed_images(x[None])  # [1, C, h, w]


class OsamMinMaxEncoder(nn.Module):
    """osam's encoder input x [1, 3, S, S] -> image_embeddings [1, C, h, w] for a min-max model.

    osam resizes the picture (PIL's bilinear, 8-bit), normalises it with the ImageNet mean /
    std in float32 and pads with 0. The 8-bit pixels come back exactly by rounding
    x * std + mean (float32 keeps the round trip far within half a level), and the padding is
    where all three channels are exactly 0, a value no 8-bit pixel normalises to (the means
    are not whole numbers); then min-max over the picture's pixels and zero padding, as
    `ToolEncoder` does.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam
        mean, std = _imagenet_255()
        self.register_buffer("mean", mean, persistent=False)  # [3, 1, 1]
        self.register_buffer("std", std, persistent=False)

    def pixels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [1, 3, S, S] -> osam's resized pixels float32 [3, S, S] (0-255, whole numbers)
        and where the picture is, bool [S, S]."""
        rgb = torch.round(x[0] * self.std + self.mean)  # [3, S, S]
        inside = torch.amax(torch.abs(x[0]), dim=0) > 0  # [S, S]
        return rgb, inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sam.embed_images(min_max_inside(*self.pixels(x))[None])  # [1, C, h, w]


class ToolDecoder(nn.Module):
    """The official decoder interface in the tool's frame, returning one mask.

    frame: long side of the frame the tool's points are in (1024 for AnyLabeling /
        X-AnyLabeling; the model's S for osam, which reads S from its encoder).
    Outputs masks [1, 1, H, W] logits at orig_im_size, iou_predictions [1, 1] and
    low_res_masks [1, 1, 256, 256] (the size the tools pass back as mask_input).
    """

    def __init__(self, sam: Sam, frame: int = TOOL_FRAME) -> None:
        super().__init__()
        self.decoder = OnnxDecoder(sam)
        self.frame = frame
        self.image_size = model_image_size(sam)
        self.low_res_side = 4 * int(sam.prompt_encoder.image_embedding_size[0])
        # segment-anything's single-mask rule without control flow: the single-mask output
        # gets +1000 per point beyond 2.5 (tool prompts end in a padding point)
        reweight = torch.zeros(1, sam.mask_decoder.num_mask_tokens)
        reweight[0, 0] = 1000.0
        self.register_buffer("score_reweight", reweight, persistent=False)  # [1, 4]

    def forward(
        self,
        image_embeddings: torch.Tensor,  # [1, C, h, w]
        point_coords: torch.Tensor,  # [1, N, 2] (x, y) in the tool's frame
        point_labels: torch.Tensor,  # [1, N]
        mask_input: torch.Tensor,  # [1, 1, m, m], m = 256 in the tools
        has_mask_input: torch.Tensor,  # [1]; osam passes -1 for "no mask"
        orig_im_size: torch.Tensor,  # [2] (h, w)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tool_hw = resized_sides(orig_im_size, self.frame)
        model_hw = resized_sides(orig_im_size, self.image_size)
        to_model = (model_hw / tool_hw).flip(0).to(torch.float32)  # (x, y) factors
        coords = point_coords * to_model
        masks_in = F.interpolate(
            mask_input, size=(self.low_res_side,) * 2, mode="bilinear", align_corners=False
        )  # [1, 1, 4h, 4w]
        has_mask = torch.clamp(has_mask_input, 0.0, 1.0)
        low_res, iou = self.decoder.low_res_masks(
            image_embeddings, coords, point_labels, masks_in, has_mask
        )  # [1, 4, 4h, 4w], [1, 4]
        num_points = shape_as_tensor(point_coords)[1].to(torch.float32)
        best = torch.argmax(iou + (num_points - 2.5) * self.score_reweight, dim=1)  # [1]
        low_res = low_res.index_select(1, best)  # [1, 1, 4h, 4w]
        iou = iou.index_select(1, best)  # [1, 1]
        masks = self.decoder.upscale(low_res, orig_im_size)  # [1, 1, H, W]
        low_res_out = F.interpolate(
            low_res, size=(TOOL_MASK_INPUT,) * 2, mode="bilinear", align_corners=False
        )
        return masks, iou, low_res_out


# ----------------------------------------------------------------------------------------------
# export


def export_tool_encoder(sam: Sam, path: Path) -> Path:
    """encoder.onnx for AnyLabeling / X-AnyLabeling: input_image [H, W, 3] float 0-255."""
    example = torch.zeros(3 * TOOL_FRAME // 4, TOOL_FRAME, 3)  # a 768 x 1024 picture
    export_graph(
        ToolEncoder(sam).eval(),
        (example,),
        path,
        input_names=["input_image"],
        output_names=["image_embeddings"],
        dynamic_axes={"input_image": {0: "height", 1: "width"}},
    )
    return path


def export_tool_decoder(sam: Sam, path: Path, frame: int) -> Path:
    """decoder.onnx with the official inputs in a `frame`-px frame, one mask out."""
    inputs = decoder_tool_example_inputs(sam)
    export_graph(
        ToolDecoder(sam, frame).eval(),
        tuple(inputs.values()),
        path,
        input_names=DECODER_INPUTS,
        output_names=DECODER_OUTPUTS,
        dynamic_axes={
            "point_coords": {1: "num_points"},
            "point_labels": {1: "num_points"},
            "mask_input": {2: "mask_height", 3: "mask_width"},
        },
    )
    return path


def decoder_tool_example_inputs(sam: Sam) -> dict[str, torch.Tensor]:
    """The decoder inputs as the tools build them (the export's trace)."""
    grid = sam.prompt_encoder.image_embedding_size
    g = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=g),
        "point_coords": torch.tensor([[[300.0, 200.0], [0.0, 0.0]]]),
        "point_labels": torch.tensor([[1.0, -1.0]]),
        "mask_input": torch.zeros(1, 1, TOOL_MASK_INPUT, TOOL_MASK_INPUT),
        "has_mask_input": torch.tensor([0.0]),
        "orig_im_size": torch.tensor([684.0, 1024.0]),
    }


def export_osam_encoder(sam: Sam, path: Path) -> Path:
    """osam's encoder: x [1, 3, S, S] normalised (ImageNet) and padded by osam (its input name
    and its fixed shape, from which osam reads S); a min-max model's graph redoes the
    normalisation its own way."""
    s = model_image_size(sam)
    encoder = OsamMinMaxEncoder(sam) if sam.pixel_norm == "min_max" else OnnxEncoder(sam)
    export_graph(
        encoder.eval(),
        (torch.zeros(1, 3, s, s),),
        path,
        input_names=["x"],
        output_names=["image_embeddings"],
    )
    return path


def tool_model_name(source: str) -> str:
    """A model name the tools accept (X-AnyLabeling: letters, digits, '.', '_', '-')."""
    stem = Path(source).stem if source else "model"
    return "sam_train-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "model")


def anylabeling_config(sam: Sam, name: str) -> str:
    """The custom-model YAML AnyLabeling and X-AnyLabeling load ("Load custom model"): paths
    are relative to the YAML's folder; input_size / max_* are the official SAM values, which
    their SAM code reads but does not act on (both fix a 684 x 1024 frame)."""
    size = model_image_size(sam)
    return (
        "# AnyLabeling / X-AnyLabeling: Auto Labeling -> model list -> Load Custom Model -> this file\n"
        "type: segment_anything\n"
        f"name: {name}\n"
        f"display_name: {name} ({size} px, sam_train)\n"
        "encoder_model_path: encoder.onnx\n"
        "decoder_model_path: decoder.onnx\n"
        f"input_size: {TOOL_FRAME}\n"
        f"max_width: {TOOL_FRAME}\n"
        "max_height: 682\n"
    )


def export_tool_folders(sam: Sam, out: Path, name: str) -> None:
    """out/anylabeling/ (AnyLabeling, X-AnyLabeling) and out/osam/ (osam, labelme's engine)."""
    tools = out / "anylabeling"
    tools.mkdir()
    export_tool_encoder(sam, tools / "encoder.onnx")
    export_tool_decoder(sam, tools / "decoder.onnx", TOOL_FRAME)
    (tools / "model.yaml").write_text(anylabeling_config(sam, name))
    osam_dir = out / "osam"
    osam_dir.mkdir()
    export_osam_encoder(sam, osam_dir / "encoder.onnx")
    export_tool_decoder(sam, osam_dir / "decoder.onnx", model_image_size(sam))
