"""Every inference path with the released LiteMedSAM checkpoint: segment everything against
segment-anything's generator on the reference modules, ONNX graphs against our model with
preprocess.json's recipe, and sam-predict on a real image."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import console_script
from lite_medsam_helpers import lite_medsam_path, reference_lite_medsam, stardist_nuclei
from PIL import Image
from pycocotools import mask as mask_utils

from sam_train.automatic import MaskGenerator
from sam_train.predictor import SamPredictor
from sam_train.weights.export import export
from sam_train.weights.sam_loading import load_sam

# a 128 x 111 tile of the nuclei image: LiteMedSAM segments nuclei at about this scale (the
# predictor scales it to 256 px); on the whole 512-px image, scaled down, it does worse
CROP = (slice(40, 168), slice(100, 211))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rgb, _ = stardist_nuclei()
    return np.ascontiguousarray(rgb[CROP])


@pytest.fixture(scope="module")
def ours():
    return load_sam(lite_medsam_path())


def reference_sam_for(image: np.ndarray):
    """segment-anything's `Sam` on the reference modules, LiteMedSAM's min-max of this image
    written as SAM's mean / std (mean = the resized image's minimum, std = its range)."""
    seg = pytest.importorskip("segment_anything")
    from segment_anything.utils.transforms import ResizeLongestSide

    ref = reference_lite_medsam()
    resized = ResizeLongestSide(256).apply_image(image).astype(np.float32)
    lo, hi = float(resized.min()), float(resized.max())
    return seg.modeling.Sam(
        ref.image_encoder,
        ref.prompt_encoder,
        ref.mask_decoder,
        pixel_mean=[lo] * 3,
        pixel_std=[hi - lo] * 3,
    ).eval()


@pytest.mark.slow
def test_segment_everything_gives_segment_anythings_masks(ours, image):
    seg = pytest.importorskip("segment_anything")
    # LiteMedSAM was trained on boxes: its masks for single points score low, so the default
    # quality filters (0.88, 0.95) keep none; with none, everything else is compared
    settings = dict(
        points_per_side=8,
        points_per_batch=64,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode="coco_rle",
    )
    mine = MaskGenerator(ours, **settings).generate(image)
    theirs = seg.SamAutomaticMaskGenerator(reference_sam_for(image), **settings).generate(image)
    assert len(mine) == len(theirs)
    mine, theirs = ([r for r in rs if r["area"] > 0] for rs in (mine, theirs))  # IoU: non-empty
    assert len(mine) == len(theirs) >= 5
    a = [r["segmentation"] for r in mine]
    b = [r["segmentation"] for r in theirs]
    iou = mask_utils.iou(a, b, [0] * len(b))
    assert iou.max(axis=1).min() > 0.99 and iou.max(axis=0).min() > 0.99
    scores = sorted(r["predicted_iou"] for r in mine)
    assert np.allclose(scores, sorted(r["predicted_iou"] for r in theirs), atol=1e-3)


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_graphs_and_preprocess_json_reproduce_our_model(ours, image, tmp_path):
    pytest.importorskip("onnxruntime")
    out = export(lite_medsam_path(), "onnx", tmp_path / "onnx")
    prep = json.loads((out / "preprocess.json").read_text())
    assert prep["pixel_norm"] == "min_max" and prep["image_size"] == 256
    # preprocess.json's recipe by hand: resize the long side, min-max, pad bottom-right
    h, w = image.shape[:2]
    s = prep["image_size"] / max(h, w)
    nh, nw = (int(np.floor(side * s + 0.5)) for side in (h, w))
    x = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    x = (x - x.min()) / max(x.max() - x.min(), 1e-8)
    padded = np.zeros((256, 256, 3), np.float32)
    padded[:nh, :nw] = x
    (emb,) = _session(out / "encoder.onnx").run(None, {"images": padded.transpose(2, 0, 1)[None]})
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    assert np.abs(emb - predictor.embedding.numpy()).max() < 1e-4

    box = np.array([30.0, 40.0, 120.0, 150.0])  # original pixels
    scale = np.array([nw / w, nh / h] * 2)
    feeds = {
        "image_embeddings": emb,
        "point_coords": (box * scale).reshape(1, 2, 2).astype(np.float32),
        "point_labels": np.array([[2, 3]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([h, w], np.float32),
    }
    masks, iou, low = _session(out / "decoder.onnx").run(None, feeds)
    with torch.no_grad():
        ref_low, ref_iou = ours.decode(
            predictor.embedding,
            boxes=torch.tensor(box * scale, dtype=torch.float32)[None],
            multimask_output=None,
        )  # all four outputs, the single-mask one first
    assert np.abs(low - ref_low.numpy()).max() < 1e-4
    assert np.abs(iou - ref_iou.numpy()).max() < 1e-4
    m, _, _ = predictor.predict(box=box, multimask_output=False)
    assert ((masks[0, 0] > 0) == m[0]).mean() > 0.999


def test_sam_predict_segments_nuclei_with_a_box(image, tmp_path):
    _, labels = stardist_nuclei()
    crop = labels[CROP]
    nucleus = np.bincount(crop[crop > 0]).argmax()  # the largest nucleus in the crop
    ys, xs = np.nonzero(crop == nucleus)
    Image.fromarray(image).save(tmp_path / "nuclei.png")
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    res = subprocess.run(
        [
            console_script("sam-predict"),
            str(lite_medsam_path()),
            "--image",
            str(tmp_path / "nuclei.png"),
            "--box",
            box,
            "--out",
            str(tmp_path / "pred.png"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "pred.png").stat().st_size > 0
    predictor = SamPredictor.from_checkpoint(lite_medsam_path())
    predictor.set_image(image)
    m, _, _ = predictor.predict(box=[int(v) for v in box.split(",")], multimask_output=False)
    truth = crop == nucleus
    assert (m[0] & truth).sum() / (m[0] | truth).sum() > 0.7  # a real model: it segments


def test_lite_medsam_as_a_teacher_gets_its_own_normalisation(ours):
    """A student's ImageNet-normalised batch reaches a LiteMedSAM teacher min-max scaled; a
    ViT/16 student at 256 px (a 16 x 16 grid) is refused with the sizes that would fit."""
    from sam_train.lit.teacher_models import embedding_grid_problem
    from sam_train.models.pixels import normalise_pixels
    from sam_train.models.teacher import SamTeacher

    rgb, _ = stardist_nuclei()
    x = torch.from_numpy(rgb[100:356, 50:306].copy()).permute(2, 0, 1)[None]  # [1, 3, 256, 256]
    teacher = SamTeacher(ours)
    with torch.no_grad():
        expected = ours.embed_images(normalise_pixels(x, "min_max"))
    got = teacher.embeddings(normalise_pixels(x, "imagenet"))
    assert (got - expected).abs().max() < 1e-3
    assert teacher.features(normalise_pixels(x, "imagenet")).shape == (1, 320, 64, 64)
    problem = embedding_grid_problem(256, 16, teacher)
    assert problem and "model.image_size=1024" in problem and "model.patch_size=4" in problem
    assert "model.neck_upsample=4" in problem


def test_a_vit16_student_with_an_upsampling_neck_distils_lite_medsam(tmp_path):
    """A ViT/16 student at 256 px with model.neck_upsample=4 meets LiteMedSAM's 64 x 64
    embeddings: two distillation steps (the second in the decoder phase) lower the embedding
    loss on the batch they train on."""
    import lightning as L
    from torch.utils.data import DataLoader

    from sam_train.data.batch import SamBatch
    from sam_train.lit.distill_module import DistillModule
    from sam_train.lit.optim import OptimConfig
    from sam_train.lit.teacher_models import distill_student
    from sam_train.models.pixels import normalise_pixels

    rgb, labels = stardist_nuclei()
    tile = torch.from_numpy(rgb[:256, :256].copy()).permute(2, 0, 1)[None]  # [1, 3, 256, 256]
    images = normalise_pixels(tile.float(), "imagenet")
    ids = [i for i in np.unique(labels[:256, :256]) if i][:2]
    masks = torch.from_numpy(np.stack([labels[:256, :256] == i for i in ids]))[None]  # [1,2,H,W]
    boxes = []
    for m in masks[0]:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    batch = SamBatch(
        images,
        masks,
        torch.ones(1, len(ids), dtype=torch.bool),
        torch.tensor(boxes, dtype=torch.float32)[None],
        torch.full((1, len(ids)), -1),
        image_hw=torch.tensor([[256, 256]]),
    )
    torch.manual_seed(0)
    student = distill_student(
        str(lite_medsam_path()),
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=256,
        patch_size=16,
        window_size=8,
        neck_upsample=4,
    )
    module = DistillModule(
        student,
        OptimConfig(lr=1e-3, warmup_steps=0),
        teacher=str(lite_medsam_path()),
        decoder_phase_start=1,
        max_masks_per_image=2,
    )
    module.interactive.num_click_rounds = 0
    with torch.no_grad():
        before, emb, target = module.embedding_loss(batch)
    assert emb.shape == target.shape == (1, 256, 64, 64)
    trainer = L.Trainer(
        max_steps=2,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )

    class Data(L.LightningDataModule):
        batch_size = 1

        def train_dataloader(self):
            return DataLoader([batch], batch_size=None)

    trainer.fit(module, datamodule=Data())
    assert trainer.global_step == 2 and module.in_decoder_phase()
    with torch.no_grad():
        after, _, _ = module.embedding_loss(batch)
    assert after < before


def test_the_page_answers_a_box_with_the_predictors_masks(ours, image, tmp_path):
    """sam-app's service on lite_medsam.pth: a box on an uploaded nuclei image gives
    `SamPredictor.predict`'s masks."""
    pytest.importorskip("fastapi")
    import io

    from sam_train.app.server import ImageStore, Prompt, SegmentService

    service = SegmentService(lite_medsam_path(), ImageStore(None))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    image_id = service.images.add(buf.getvalue(), "nuclei.png")
    box = [30.0, 40.0, 90.0, 100.0]
    out = service.segment(image_id, Prompt(points=[], labels=[], box=box))
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=np.array(box))
    assert len(out["masks"]) == len(masks) == 3
    for page, m in zip(out["masks"], masks):
        assert np.array_equal(mask_utils.decode(page["rle"]).astype(bool), m)
