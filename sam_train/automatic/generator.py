"""Segment everything: prompt a SAM with a grid of points, keep the good, distinct masks.

The stages and parameter names are those of `segment_anything.SamAutomaticMaskGenerator`, so
settings carry over and the same weights give the same masks (tests/test_automatic_parity.py):
for each crop (the whole image, then optional layers of overlapping crops) the image is
embedded once, the grid's points are decoded in batches (3 masks each), masks are kept when
their predicted IoU passes `pred_iou_thresh` and their stability score `stability_score_thresh`,
masks cut by a crop edge are dropped, box NMS removes duplicates within a crop, then across
crops (smaller crops win), and optionally small holes and islands are cleaned up.

Where the time goes differs from the reference: the IoU filter runs on the low-res logits
before anything is upsampled, full-resolution logits exist only a chunk at a time, and only
the masks that survive NMS are upsampled again and run-length encoded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.ops import nms

from sam_train.automatic.grid import crop_boxes, layer_point_grids
from sam_train.automatic.mask_ops import (
    decode_rle,
    encode_rle,
    logits_to_boxes,
    masks_to_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
    uncompressed_rle,
)
from sam_train.errors import UserError
from sam_train.models.sam.sam import Sam
from sam_train.predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
FULL_RES_CHUNK = 32  # masks upsampled to image resolution at once (32 x 1024^2 x 4 B = 128 MB)


class MaskGeneratorError(UserError):
    """Segment-everything settings that cannot work (for every image, or for this image's size);
    the message names the setting and the fix."""


@dataclass
class _Masks:
    """Kept masks of one crop or image: low-res logits [N, 4h, 4w] (crop frame until encoded),
    predicted IoU [N], stability [N], boxes [N, 4] xyxy, points [N, 2] (x, y)."""

    logits: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    rles: list[dict] = field(default_factory=list)
    crop_boxes: torch.Tensor | None = None  # [N, 4] xyxy

    def select(self, index: torch.Tensor) -> _Masks:
        """The masks at `index` [n] long, in that order (fields may live on other devices)."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[index.to(t.device)]

        return _Masks(
            *(pick(getattr(self, f)) for f in _TENSOR_FIELDS),
            [self.rles[i] for i in index.tolist()] if self.rles else [],
            pick(self.crop_boxes) if self.crop_boxes is not None else None,
        )

    @staticmethod
    def cat(parts: list[_Masks]) -> _Masks:
        crops = [p.crop_boxes for p in parts]
        return _Masks(
            *(torch.cat([getattr(p, f) for p in parts]) for f in _TENSOR_FIELDS),
            [r for p in parts for r in p.rles],
            torch.cat(crops) if crops and all(c is not None for c in crops) else None,
        )


_TENSOR_FIELDS = ("logits", "iou", "stability", "boxes", "points")

# the stages `stage_counts` reports, in order: grid points, masks predicted (3 per point), then
# the masks left after each filter (crop_nms: duplicates between crops; small_regions:
# min_mask_region_area's clean-up)
STAGES = (
    "points", "predicted", "pred_iou", "stability", "crop_edge", "box_nms", "crop_nms",
    "small_regions",
)  # fmt: skip
# the setting that decides each filter, for messages
STAGE_SETTINGS = {
    "pred_iou": "pred_iou_thresh",
    "stability": "stability_score_thresh",
    "crop_edge": "crop_n_layers",
    "box_nms": "box_nms_thresh",
    "crop_nms": "crop_nms_thresh",
    "small_regions": "min_mask_region_area",
}


class MaskGenerator:
    """Every object in an image, as masks with their quality scores.

    Args (names, meanings and defaults of `segment_anything.SamAutomaticMaskGenerator`):
        predictor_or_model: a `SamPredictor` or a `Sam` (wrapped in a CPU predictor).
        points_per_side: grid points along each side of the image (points_per_side^2 prompts);
            None when `point_grids` is given.
        points_per_batch: prompts decoded at once (memory grows with it).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 = no filter).
        stability_score_thresh: keep masks whose stability score is at least this (0 = off).
        stability_score_offset: logit shift of the two cut-offs compared by the stability score.
        box_nms_thresh: box IoU above which the lower-scoring of two masks in a crop is dropped.
        crop_n_layers: extra layers of crops (layer i: 2^i x 2^i crops), 0 = whole image only.
        crop_nms_thresh: box IoU for removing duplicates between crops.
        crop_overlap_ratio: overlap of first-layer crops as a fraction of the short side.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor^i points a side.
        point_grids: explicit [n, 2] grids in [0, 1], one per layer (instead of points_per_side).
        min_mask_region_area: fill holes and drop islands smaller than this (pixels), 0 = off.
        output_mode: 'binary_mask' (bool arrays), 'uncompressed_rle' or 'coco_rle'.
    """

    def __init__(
        self,
        predictor_or_model: SamPredictor | Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        _check_settings(
            points_per_side, point_grids, points_per_batch, crop_n_layers,
            crop_n_points_downscale_factor, output_mode, min_mask_region_area,
        )  # fmt: skip
        self.predictor = (
            predictor_or_model
            if isinstance(predictor_or_model, SamPredictor)
            else SamPredictor(predictor_or_model)
        )
        if points_per_side is not None:
            point_grids = layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        if len(point_grids) < crop_n_layers + 1:
            raise MaskGeneratorError(
                f"point_grids has {len(point_grids)} grids for {crop_n_layers + 1} layers "
                f"(crop_n_layers={crop_n_layers}): give one grid per layer"
            )
        self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.stage_counts = dict.fromkeys(STAGES, 0)  # of the last `generate`
        self.output_mode = output_mode
        # seconds of the last generate() by stage (on a GPU, kernels still queued when a stage
        # ends are counted in the next one)
        self.timings: dict[str, float] = {}

    @property
    def model(self) -> Sam:
        return self.predictor.model

    # ------------------------------------------------------------------------- public
    @torch.no_grad()
    def generate(self, image: np.ndarray | Image.Image) -> list[dict[str, Any]]:
        """Masks of an RGB image (HxWx3 uint8), as segment-anything's records: `segmentation`,
        `area`, `bbox` (xywh), `predicted_iou`, `point_coords`, `stability_score`, `crop_box`."""
        image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image H x W x 3, got shape {image.shape}")
        self.timings = {"encoder": 0.0, "decoder": 0.0, "filtering": 0.0}
        # masks left after each stage, so that "0 masks" says which filter removed them
        self.stage_counts = dict.fromkeys(STAGES, 0)
        start = time.perf_counter()
        masks = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            masks = self._clean_small_regions(masks)
        self.stage_counts["small_regions"] = len(masks.iou)
        records = self._records(masks)
        total = time.perf_counter() - start
        self.timings["filtering"] = total - self.timings["encoder"] - self.timings["decoder"]
        return records

    def check_image_size(self, image_hw: tuple[int, int]) -> None:
        """Refuse an image whose crops would be empty or hold fewer pixels than grid points."""
        small = self._too_small_crop(image_hw, self.crop_n_layers)
        if small is None:
            return
        (x0, y0, x1, y1), layer, side = small
        fits = [n for n in range(self.crop_n_layers) if self._too_small_crop(image_hw, n) is None]
        hint = f"crop_n_layers={max(fits)}" if fits else "fewer points_per_side"
        raise MaskGeneratorError(
            f"image {image_hw[1]}x{image_hw[0]} is too small for crop_n_layers="
            f"{self.crop_n_layers}: a layer-{layer} crop is {x1 - x0}x{y1 - y0} px for {side} "
            f"points a side; use {hint} or a larger image"
        )

    def _too_small_crop(
        self, image_hw: tuple[int, int], n_layers: int
    ) -> tuple[list[int], int, int] | None:
        """The first crop (box, layer, points a side) narrower than its points, or None."""
        boxes, layers = crop_boxes(image_hw, n_layers, self.crop_overlap_ratio)
        for box, layer in zip(boxes, layers):
            side = max(int(round(len(self.point_grids[layer]) ** 0.5)), 1)
            if min(box[2] - box[0], box[3] - box[1]) < side:
                return box, layer, side
        return None

    # ------------------------------------------------------------------------- stages
    def _generate_masks(self, image: np.ndarray) -> _Masks:
        image_hw = image.shape[:2]
        self.check_image_size(image_hw)
        boxes, layers = crop_boxes(image_hw, self.crop_n_layers, self.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer) for box, layer in zip(boxes, layers)]
        masks = _Masks.cat(parts)
        if len(boxes) > 1:  # duplicates between crops: the smaller crop's mask wins
            crop = masks.crop_boxes.float()
            scores = 1 / ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]))
            masks = masks.select(nms(masks.boxes.float(), scores, self.crop_nms_thresh))
        self.stage_counts["crop_nms"] = len(masks.iou)
        return masks

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> _Masks:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_hw = crop.shape[:2]
        t0 = time.perf_counter()
        self.predictor.set_image(crop)  # the crop is embedded once for all its prompts
        self.timings["encoder"] += time.perf_counter() - t0
        points = self.point_grids[layer] * np.array(crop_hw[::-1])  # [P, 2] crop pixels
        parts = [
            self._process_batch(points[i : i + self.points_per_batch], crop_box, image.shape[:2])
            for i in range(0, len(points), self.points_per_batch)
        ]
        masks = _Masks.cat(parts)
        masks = masks.select(nms(masks.boxes.float(), masks.iou, self.box_nms_thresh))
        self.stage_counts["box_nms"] += len(masks.iou)
        # to the image frame; the crop's kept masks are upsampled once more, then encoded
        masks.rles = self._encode(masks.logits, crop_box, image.shape[:2])
        shift = torch.tensor([x0, y0, x0, y0], device=masks.boxes.device)
        masks.boxes = masks.boxes + shift
        masks.points = masks.points + torch.tensor([x0, y0], dtype=masks.points.dtype)
        masks.crop_boxes = torch.tensor([crop_box] * len(masks.iou), dtype=torch.long).reshape(
            -1, 4
        )
        masks.logits = masks.logits.new_empty(len(masks.iou), 0, 0)  # encoded: no longer needed
        return masks

    def _process_batch(
        self, points: np.ndarray, crop_box: list[int], image_hw: tuple[int, int]
    ) -> _Masks:
        """Decode a batch of grid points [K, 2] (crop pixels) and keep the masks that pass the
        IoU, stability and crop-edge filters."""
        device = self.predictor.device
        (h, w), (nh, nw) = self.predictor.original_size, self.predictor.input_hw
        coords = torch.as_tensor(points * np.array([nw / w, nh / h]), dtype=torch.float32)
        k = coords.shape[0]
        t0 = time.perf_counter()
        logits, iou = self.model.decode(
            self.predictor.embedding,
            points=(coords[:, None].to(device), torch.ones(k, 1, dtype=torch.long, device=device)),
            multimask_output=True,
        )  # [K, 3, 4g, 4g], [K, 3]
        self.timings["decoder"] += time.perf_counter() - t0
        logits, iou = logits.flatten(0, 1), iou.flatten(0, 1)  # point-major, as the reference
        pts = torch.as_tensor(points).repeat_interleave(3, dim=0)  # [3K, 2] float64
        self.stage_counts["points"] += k
        self.stage_counts["predicted"] += len(iou)
        if self.pred_iou_thresh > 0:
            keep = (iou > self.pred_iou_thresh).nonzero()[:, 0]
            logits, iou, pts = logits[keep], iou[keep], pts[keep.cpu()]
        self.stage_counts["pred_iou"] += len(iou)
        stability, boxes = self._full_res_stats(logits)
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.stability_score_thresh > 0:
            keep &= stability >= self.stability_score_thresh
        self.stage_counts["stability"] += int(keep.sum())
        keep &= ~near_crop_edge(boxes, crop_box, [0, 0, image_hw[1], image_hw[0]])
        self.stage_counts["crop_edge"] += int(keep.sum())
        keep = keep.nonzero()[:, 0]
        return _Masks(logits[keep], iou[keep], stability[keep], boxes[keep], pts[keep.cpu()])

    def _full_res(self, logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits [n, 4g, 4g] -> logits [n, H, W] of the image set in the predictor, as
        SAM's postprocessing: to the square input, cut the padding, resize to the original."""
        (h, w), (nh, nw) = self.predictor.original_size, self.predictor.input_hw
        x = upsample_unpadded(logits[:, None], self.predictor.image_size, nh, nw)
        if (nh, nw) != (h, w):  # resizing to the same size is the identity
            x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
        return x[:, 0]

    def _full_res_stats(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability scores [n] and boxes [n, 4] (crop pixels) at full resolution, a chunk of
        masks at a time."""
        threshold = self.model.mask_threshold
        stability, boxes = [], []
        for chunk in logits.split(FULL_RES_CHUNK):
            full = self._full_res(chunk)  # [c, H, W]
            stability.append(stability_score(full, threshold, self.stability_score_offset))
            boxes.append(logits_to_boxes(full, threshold))
        if not stability:
            return logits.new_zeros(0), torch.zeros(0, 4, dtype=torch.long, device=logits.device)
        return torch.cat(stability), torch.cat(boxes)

    def _encode(
        self, logits: torch.Tensor, crop_box: list[int], image_hw: tuple[int, int]
    ) -> list[dict]:
        """COCO RLEs in the whole image's frame of low-res logits [n, 4g, 4g] of one crop."""
        x0, y0, x1, y1 = crop_box
        full_frame = (x0, y0, x1, y1) == (0, 0, image_hw[1], image_hw[0])
        rles = []
        for chunk in logits.split(FULL_RES_CHUNK):
            masks = self._full_res(chunk) > self.model.mask_threshold  # [c, h, w]
            if not full_frame:
                pad = (x0, image_hw[1] - x1, y0, image_hw[0] - y1)
                masks = F.pad(masks, pad, value=False)
            rles += encode_rle(masks)
        return rles

    def _clean_small_regions(self, masks: _Masks) -> _Masks:
        """Fill small holes, drop small islands, then NMS again preferring untouched masks."""
        if not masks.rles:
            return masks
        cleaned, untouched = [], []
        for rle in masks.rles:
            mask, filled = remove_small_regions(decode_rle(rle), self.min_mask_region_area, "holes")
            mask, dropped = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned.append(torch.from_numpy(mask))
            untouched.append(not (filled or dropped))
        stack = torch.stack(cleaned)  # [N, H, W]
        boxes = masks_to_boxes(stack)
        scores = torch.tensor(untouched, dtype=torch.float32)
        keep = nms(boxes.float(), scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep.tolist():
            if not untouched[i]:
                masks.rles[i] = encode_rle(stack[i : i + 1])[0]
                masks.boxes[i] = boxes[i]
        return masks.select(keep)

    def _records(self, masks: _Masks) -> list[dict[str, Any]]:
        records = []
        for i, rle in enumerate(masks.rles):
            if self.output_mode == "coco_rle":
                segmentation: Any = rle
            elif self.output_mode == "binary_mask":
                segmentation = decode_rle(rle)
            else:
                segmentation = uncompressed_rle(rle)
            x0, y0, x1, y1 = masks.boxes[i].tolist()
            cx0, cy0, cx1, cy1 = masks.crop_boxes[i].tolist()
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(mask_utils.area(rle)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(masks.iou[i]),
                    "point_coords": [masks.points[i].tolist()],
                    "stability_score": float(masks.stability[i]),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return records


def upsample_unpadded(x: torch.Tensor, size: int, nh: int, nw: int) -> torch.Tensor:
    """`F.interpolate(x, (size, size), bilinear)[..., :nh, :nw]`, equal to the last bit,
    without upsampling the bottom padding (a landscape image's): at a power-of-two scale s only
    the low-res rows that the first nh output rows read are upsampled (output row i reads input
    rows floor((i + 0.5) / s - 0.5) and the one after; a power of two keeps 1 / s exact, so the
    kernel maps rows alike given the scale or the sizes). Columns are not cut: the kernel
    vectorises along a row, and a narrower row can round its tail differently."""
    g = x.shape[-1]
    s = size // g
    rows = g
    if size % g == 0 and s & (s - 1) == 0 and x.shape[-2] == g:
        rows = min(g, max(0, math.floor((nh - 0.5) / s - 0.5)) + 2)
    if rows == g:
        up = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    else:
        up = F.interpolate(x[..., :rows, :], scale_factor=s, mode="bilinear", align_corners=False)
    return up[..., :nh, :nw]


def _check_settings(
    points_per_side: int | None,
    point_grids: list[np.ndarray] | None,
    points_per_batch: int,
    crop_n_layers: int,
    downscale: int,
    output_mode: str,
    min_mask_region_area: int,
) -> None:
    """Settings that cannot work, refused with the fix, before any image is read."""
    if (points_per_side is None) == (point_grids is None):
        raise MaskGeneratorError("give exactly one of points_per_side or point_grids")
    if points_per_side is not None and points_per_side < 1:
        raise MaskGeneratorError(
            f"points_per_side={points_per_side}: need at least 1 point a side (SAM uses 32)"
        )
    if points_per_batch < 1:
        raise MaskGeneratorError(f"points_per_batch={points_per_batch}: need at least 1")
    if crop_n_layers < 0:
        raise MaskGeneratorError(f"crop_n_layers={crop_n_layers}: use 0 (no crops) or more")
    if downscale < 1:
        raise MaskGeneratorError(f"crop_n_points_downscale_factor={downscale}: use 1 or more")
    if points_per_side is not None and int(points_per_side / downscale**crop_n_layers) < 1:
        raise MaskGeneratorError(
            f"points_per_side={points_per_side} with crop_n_points_downscale_factor={downscale} "
            f"leaves no points in crop layer {crop_n_layers}: lower the factor or crop_n_layers"
        )
    if output_mode not in OUTPUT_MODES:
        raise MaskGeneratorError(
            f"output_mode={output_mode!r}: choose one of {', '.join(OUTPUT_MODES)}"
        )
    if min_mask_region_area < 0:
        raise MaskGeneratorError(
            f"min_mask_region_area={min_mask_region_area}: use 0 (off) or more"
        )


def describe_stages(counts: dict[str, int], generator: MaskGenerator) -> str:
    """How many masks each stage kept, with the setting of the filter that removed the most:
    'points 1024 -> predicted 3072 -> pred_iou_thresh 0.88: 0 -> ...'."""
    parts = [f"points {counts['points']}", f"predicted {counts['predicted']}"]
    previous, worst, worst_drop = counts["predicted"], None, 0
    for stage in STAGES[2:]:
        setting = STAGE_SETTINGS[stage]
        value = getattr(generator, setting)
        parts.append(f"{setting} {value:g}: {counts[stage]}")
        if previous - counts[stage] > worst_drop:
            worst, worst_drop = setting, previous - counts[stage]
        previous = counts[stage]
    line = " -> ".join(parts)
    if counts["small_regions"] == 0 and worst in ("pred_iou_thresh", "stability_score_thresh"):
        line += f"; {worst} removed the most: try a lower one, e.g. --amg {worst}=0.5"
    return line
