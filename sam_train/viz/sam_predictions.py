"""Predictions for pictures: one centre point and one box per mask on validation batches (tiles
spread over several images), and the `predict` command's picture of a photo and its prompts."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from sam_train.data.batch import SamBatch
from sam_train.metrics import center_points, mask_iou
from sam_train.models.sam.sam import Sam, upscale_logits
from sam_train.viz.labels import label_box, stack_rows, text_bar
from sam_train.viz.sam_masks import RIM, draw_box, draw_outline, mask_tile

POINT_ROW = "one point at the mask's centre (most confident of 3 outputs)"
BOX_ROW = "one box (the mask's bounding box)"


def spread_over_images(
    batches: list[SamBatch], num_masks: int, min_area: int = 0, max_fraction: float = 1.0
) -> list[tuple[int, int, int]]:
    """(batch, image, slot) of up to `num_masks` masks taken in turn from every image, so the
    tiles show several images; each image's masks in decreasing area (the visible ones first)."""
    per_image = []
    for b, batch in enumerate(batches):
        area = batch.masks.flatten(2).sum(-1)  # [B, M]
        hw = batch.image_hw if batch.image_hw is not None else None
        for i in range(batch.batch_size):
            limit = max_fraction * (int(hw[i].prod()) if hw is not None else batch.image_size**2)
            ok = batch.mask_valid[i].bool() & (area[i] >= min_area) & (area[i] <= limit)
            slots = [s for s in area[i].argsort(descending=True).tolist() if ok[s]]
            if slots:
                per_image.append([(b, i, s) for s in slots])
    chosen: list[tuple[int, int, int]] = []
    for depth in range(max((len(s) for s in per_image), default=0)):
        chosen += [slots[depth] for slots in per_image if depth < len(slots)]
    return chosen[:num_masks]


def _real_region(batch: SamBatch, i: int) -> torch.Tensor:
    """[S, S] bool: the image's real (un-padded) part of the model frame."""
    size = batch.image_size
    h, w = batch.image_hw[i].tolist() if batch.image_hw is not None else (size, size)
    region = torch.zeros(size, size, dtype=torch.bool, device=batch.masks.device)
    region[:h, :w] = True
    return region


def box_prediction(
    sam: Sam, emb: torch.Tensor, batch: SamBatch, i: int, slot: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of mask `slot` of image `i` ([4] xyxy) and the single mask the model predicts
    from it ([S, S] bool, inside the real image); emb: that image's embedding [1, C, h, w]."""
    size = batch.image_size
    box = batch.boxes[i, slot].float()
    logits, _ = sam.decode(emb, boxes=box[None], multimask_output=False)
    pred = upscale_logits(logits.float(), (size, size))[0, 0] > sam.mask_threshold
    return box, pred & _real_region(batch, i)


@torch.no_grad()
def one_prompt_rows(
    sam: Sam,
    batches: list[SamBatch],
    num_masks: int,
    min_area: int = 0,
    max_fraction: float = 1.0,
) -> list[tuple[str, list[np.ndarray]]]:
    """Two labelled rows of tiles over the same masks: the mask predicted from one centre point
    (most confident of 3) and from the mask's box, each with its IoU."""
    picks = spread_over_images(batches, num_masks, min_area, max_fraction)
    was_training = sam.training
    sam.eval()
    points_row, boxes_row = [], []
    embeddings = {}
    for b, i, slot in picks:
        batch = batches[b]
        if b not in embeddings:
            embeddings[b] = sam.embed_images(batch.images)
        emb = embeddings[b][i : i + 1]
        size = batch.image_size
        gt = batch.masks[i, slot].bool()
        hw = tuple(batch.image_hw[i].tolist()) if batch.image_hw is not None else (size, size)
        region = _real_region(batch, i)
        point = center_points(gt[None])[:, None]  # [1, 1, 2]
        label = torch.ones(1, 1, dtype=torch.long, device=gt.device)
        logits, iou_pred = sam.decode(emb, points=(point, label))
        best = int(iou_pred[0].argmax())
        pred = (upscale_logits(logits.float(), (size, size))[0, best] > sam.mask_threshold) & region
        box, box_pred = box_prediction(sam, emb, batch, i, slot)
        name = f"image {batch.image_ids[i]}" if batch.image_ids else ""
        points_row.append(
            mask_tile(
                batch.images[i],
                gt,
                pred,
                hw,
                point[0],
                label[0],
                iou=float(mask_iou(pred[None], gt[None])[0]),
                name=name,
                pixel_norm=sam.pixel_norm,
            )
        )
        boxes_row.append(
            mask_tile(
                batch.images[i],
                gt,
                box_pred,
                hw,
                box=box,
                iou=float(mask_iou(box_pred[None], gt[None])[0]),
                name=name,
                pixel_norm=sam.pixel_norm,
            )
        )
    sam.train(was_training)
    return [(POINT_ROW, points_row), (BOX_ROW, boxes_row)]


@torch.no_grad()
def box_rows(
    models: list[tuple[str, Sam]],
    batches: list[SamBatch],
    num_masks: int,
    min_area: int = 0,
    max_fraction: float = 1.0,
) -> list[tuple[str, list[np.ndarray]]]:
    """One labelled row per (label, model) over the same masks, each tile the mask the model
    predicts from the mask's box, with its IoU: a before/after page (a model zero-shot above
    its fine-tune). The batches are normalised one way, so the models must share it."""
    norms = {(sam.pixel_norm, sam.image_encoder.img_size) for _, sam in models}
    if len(norms) != 1:
        raise ValueError(f"models prepare images differently ({sorted(norms)}): compare alike")
    picks = spread_over_images(batches, num_masks, min_area, max_fraction)
    rows = []
    for label, sam in models:
        was_training = sam.training
        sam.eval()
        embeddings, tiles = {}, []
        for b, i, slot in picks:
            batch = batches[b]
            if b not in embeddings:
                embeddings[b] = sam.embed_images(batch.images)
            box, pred = box_prediction(sam, embeddings[b][i : i + 1], batch, i, slot)
            gt = batch.masks[i, slot].bool()
            size = batch.image_size
            hw = tuple(batch.image_hw[i].tolist()) if batch.image_hw is not None else (size, size)
            iou = float(mask_iou(pred[None], gt[None])[0])
            tile = mask_tile(
                batch.images[i], gt, pred, hw, box=box, iou=iou, pixel_norm=sam.pixel_norm
            )
            tiles.append(tile)
        sam.train(was_training)
        rows.append((f"{label}: one box", tiles))
    return rows


PALETTE = (
    (255, 0, 255),
    (0, 230, 0),
    (255, 230, 0),
    (0, 200, 255),
    (255, 120, 0),
    (160, 90, 255),
    (255, 255, 255),
    (0, 255, 170),
    (255, 60, 60),
    (120, 170, 255),
)


def draw_predictions(image: np.ndarray, results: list[tuple[dict, np.ndarray]]) -> np.ndarray:
    """The photo (left) and the same photo with every predicted mask outlined in its own colour,
    its prompt (point or box) drawn in that colour and numbered (right), above a caption.

    results: (prompt as given to `SamPredictor.predict`, [H, W] bool mask) pairs."""
    out = image.astype(np.float32).copy()
    for i, (_, mask) in enumerate(results):
        colour = np.array(PALETTE[i % len(PALETTE)], np.float32)
        out[mask] = 0.75 * out[mask] + 0.25 * colour
    out = out.round().clip(0, 255).astype(np.uint8)
    for i, (_, mask) in enumerate(results):
        draw_outline(out, mask, PALETTE[i % len(PALETTE)], width=2)
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    for i, (prompt, _mask) in enumerate(results):
        colour = PALETTE[i % len(PALETTE)]
        anchor = None
        if prompt.get("box") is not None:
            box = [float(v) for v in np.asarray(prompt["box"]).reshape(-1)[:4]]
            draw_box(draw, box, colour)
            anchor = (box[0] + 3, box[1] + 3)
        coords = np.asarray(prompt.get("point_coords", np.zeros((0, 2)))).reshape(-1, 2)
        labels = np.asarray(prompt.get("point_labels", np.ones(len(coords)))).reshape(-1)
        for (x, y), lab in zip(coords, labels):
            r = 6
            fill = colour if lab == 1 else (0, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=RIM, width=2)
            anchor = anchor or (x + 8, y - 8)
        if anchor is not None:
            label_box(draw, anchor, str(i + 1))
    pair = np.concatenate([image, np.asarray(img)], axis=1)
    caption = (
        f"{len(results)} masks, each outlined in the colour of its prompt "
        "(filled dot = foreground click, rectangle = box prompt; numbers pair them)"
    )
    return stack_rows([pair, text_bar(pair.shape[1], caption)])
