"""The annotation-tool graphs normalise a picture the way the model was trained
(`Sam.pixel_norm`), not with the ImageNet values the tools were written for.

The released LiteMedSAM (256 px, per-image min-max) is exported with `sam-export` and run by
AnyLabeling's, X-AnyLabeling's and osam's own inference code on an odd-sized tile of real
nuclei, against our `SamPredictor` in the tool's frame. The tile's pixels span 0-79, so
min-max stretches them about threefold: an ImageNet-normalised graph would give other masks
and scores (checked below, so that the comparison can fail). A tiny random min-max SAM checks
the encoders on a colour photo (min-max over all three channels together, padding excluded).
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from annotation_tools import (
    RecordingSession,
    assert_same_mask,
    load_tool_module,
    reference,
    tool_paths,
)
from conftest import call_main, tiny_sam
from lite_medsam_helpers import lite_medsam_path, stardist_nuclei
from PIL import Image

from sam_train.cli import export as export_cli
from sam_train.predictor import SamPredictor
from sam_train.weights.onnx_tools import OsamMinMaxEncoder, export_tool_folders
from sam_train.weights.sam_loading import load_sam

ort = pytest.importorskip("onnxruntime")

TILE = (slice(40, 125), slice(100, 229))  # 85 x 129 px of stardist's nuclei, values 0-79
PHOTO = skimage.data.chelsea()  # 300 x 451 RGB


def dimmed(rgb: np.ndarray) -> np.ndarray:
    """Channels scaled and lifted apart (levels 20-84, 10-47, 5-62): min and max come from
    different channels, lie inside the picture rather than at the padding's 0, and below
    osam's padding (the ImageNet mean, 124 / 116 / 104 in 8-bit levels)."""
    return (rgb * np.array([0.3, 0.2, 0.25]) + [20, 10, 5]).astype(np.uint8)


@pytest.fixture(scope="module")
def tile() -> tuple[np.ndarray, dict]:
    """The RGB tile and prompts on its largest nucleus: its box, and three clicks (one inside,
    two background clicks just outside it), in tile pixels."""
    rgb, labels = stardist_nuclei()
    image, labels = np.ascontiguousarray(rgb[TILE]), labels[TILE]
    nucleus = labels == np.bincount(labels[labels > 0]).argmax()
    ys, xs = np.nonzero(nucleus)
    cx, cy = float(xs.mean()), float(ys.mean())
    prompts = {
        "box": dict(box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]),
        "three clicks": dict(
            points=[[cx, cy], [xs.min() - 3.0, cy], [cx, ys.max() + 3.0]], labels=[1, 0, 0]
        ),
    }
    return image, prompts


@pytest.fixture(scope="module")
def lite_medsam_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("lite_medsam") / "model"
    run = call_main(export_cli.main, [lite_medsam_path(), "--format", "onnx", "--out", out])
    assert run.returncode == 0, run.stderr[-3000:]
    return load_sam(lite_medsam_path()), out


def imagenet_twin(sam):
    """The same weights, told to take ImageNet-normalised pictures (the tools' default)."""
    twin = load_sam(lite_medsam_path())
    twin.architecture = {**sam.architecture, "pixel_norm": "imagenet"}
    return twin


def tool_marks(prompt: dict) -> list[dict]:
    marks = [
        {"type": "point", "data": xy, "label": lab}
        for xy, lab in zip(prompt.get("points", []), prompt.get("labels", []))
    ]
    if "box" in prompt:
        marks.append({"type": "rectangle", "data": prompt["box"]})
    return marks


@pytest.mark.parametrize("tool", ["anylabeling", "x-anylabeling"])
def test_lite_medsam_in_the_tools_gives_the_predictors_masks(lite_medsam_export, tile, tool):
    sam, out = lite_medsam_export
    image, prompts = tile
    assert sam.pixel_norm == "min_max" and sam.image_encoder.img_size == 256
    _, (encoder_path, decoder_path) = tool_paths(out)
    model = load_tool_module(tool).SegmentAnythingONNX(str(encoder_path), str(decoder_path))
    model.encoder_session = encoder = RecordingSession(model.encoder_session)
    model.decoder_session = decoder = RecordingSession(model.decoder_session)
    embedding = model.encode(image)
    (canvas,) = encoder.calls[0][0].values()  # [684, 1024, 3]: the tile warped into the canvas
    predictor = SamPredictor(sam)
    predictor.set_image(canvas.astype(np.uint8))
    assert np.abs(embedding["image_embedding"] - predictor.embedding.numpy()).max() < 1e-4
    imagenet = SamPredictor(imagenet_twin(sam))
    imagenet.set_image(canvas.astype(np.uint8))
    scale = min(canvas.shape[0] / image.shape[0], canvas.shape[1] / image.shape[1])

    for prompt in prompts.values():
        model.predict_masks(embedding, tool_marks(prompt))
        _, (tool_masks, tool_iou, _) = decoder.calls[-1]
        ref_mask, ref_score = reference(predictor, prompt, scale)
        assert_same_mask(tool_masks[0, 0], tool_iou[0, 0], ref_mask, ref_score)
        # what an ImageNet-normalised graph would have shown: the comparison above tells apart
        wrong_mask, wrong_score = reference(imagenet, prompt, scale)
        assert (wrong_mask != ref_mask).mean() > 0.005 or abs(wrong_score - ref_score) > 0.05
    box_mask, _ = reference(predictor, prompts["box"], scale)
    x0, y0, x1, y1 = (int(v * scale) for v in prompts["box"]["box"])
    # a real nucleus mask: most of the box, little outside it
    assert (
        box_mask[y0:y1, x0:x1].mean() > 0.5 and box_mask.sum() < 1.2 * box_mask[y0:y1, x0:x1].sum()
    )


def test_lite_medsam_in_osam_gives_the_predictors_masks(
    lite_medsam_export, tile, tmp_path, monkeypatch
):
    osam = pytest.importorskip("osam")
    from sam_train.weights.osam_model import register_osam_model

    sam, out = lite_medsam_export
    image, prompts = tile
    monkeypatch.setenv("HOME", str(tmp_path))  # osam's blob cache lives under ~/.cache/osam
    monkeypatch.setattr(osam.apis, "registered_model_types", list(osam.apis.registered_model_types))
    model = register_osam_model(out, name="sam-train:lite-medsam")()
    decoder = RecordingSession(model._inference_sessions["decoder"])
    model._inference_sessions["decoder"] = decoder
    embedding = model.encode_image(image)
    predictor = SamPredictor(sam)
    predictor.set_image(image)  # osam's frame is the picture itself
    assert np.abs(embedding.embedding - predictor.embedding.numpy()[0]).max() < 1e-4
    for prompt in prompts.values():
        points, labels = list(prompt.get("points", [])), list(prompt.get("labels", []))
        if "box" in prompt:  # labelme's box: two corner points labelled 2 and 3
            points += [prompt["box"][:2], prompt["box"][2:]]
            labels += [2, 3]
        model.generate(
            osam.types.GenerateRequest(
                model=model.name,
                image_embedding=embedding,
                prompt=osam.types.Prompt(
                    points=np.asarray(points, np.float32), point_labels=np.asarray(labels)
                ),
            )
        )
        _, (tool_masks, tool_iou, _) = decoder.calls[-1]
        assert_same_mask(tool_masks[0, 0], tool_iou[0, 0], *reference(predictor, prompt, 1.0))


# ----------------------------------------------------------------------------------------------
# the encoders alone, on a colour photo


@pytest.fixture(scope="module")
def min_max_folders(tmp_path_factory):
    """A tiny 256-px min-max SAM with non-trivial weights and its anylabeling/ + osam/ folders."""
    sam = tiny_sam(image_size=256, pixel_norm="min_max").eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("min_max")
    export_tool_folders(sam, out, "tiny")
    return sam, out


@pytest.mark.parametrize("hw", [(300, 451), (451, 300), (17, 33)])
def test_tool_encoder_min_max_over_the_picture_as_the_predictor(min_max_folders, hw):
    sam, out = min_max_folders
    picture = np.asarray(Image.fromarray(PHOTO).resize(hw[::-1], Image.BILINEAR))
    picture = dimmed(picture)
    session = ort.InferenceSession(str(out / "anylabeling" / "encoder.onnx"))
    (embedding,) = session.run(None, {"input_image": picture.astype(np.float32)})
    predictor = SamPredictor(sam)
    predictor.set_image(picture)
    assert np.abs(embedding - predictor.embedding.numpy()).max() < 1e-4
    sam.architecture["pixel_norm"] = "imagenet"
    try:
        predictor.set_image(picture)
    finally:
        sam.architecture["pixel_norm"] = "min_max"
    assert np.abs(embedding - predictor.embedding.numpy()).max() > 1e-2


def test_osam_encoder_recovers_osams_pixels_and_min_max_normalises(
    min_max_folders, tmp_path, monkeypatch
):
    """osam normalises with ImageNet values outside the graph; the graph gets back every 8-bit
    level exactly (a picture holding all 256 in each channel) and finds the padding."""
    osam = pytest.importorskip("osam")
    from sam_train.weights.osam_model import register_osam_model

    sam, out = min_max_folders
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(osam.apis, "registered_model_types", list(osam.apis.registered_model_types))
    model = register_osam_model(out, name="sam-train:tiny-min-max")()
    encoder = RecordingSession(model._inference_sessions["encoder"])
    model._inference_sessions["encoder"] = encoder
    levels = np.random.default_rng(0).permuted(np.tile(np.arange(256), (3, 100, 1)), axis=2)
    picture = np.ascontiguousarray(levels.transpose(1, 2, 0)).astype(np.uint8)  # [100, 256, 3]
    embedding = model.encode_image(picture)
    (x,) = encoder.calls[0][0].values()  # [1, 3, 256, 256] as osam normalised and padded it
    rgb, inside = OsamMinMaxEncoder(sam).pixels(torch.from_numpy(x))
    assert inside[:100].all() and not inside[100:].any()
    assert torch.equal(rgb[:, :100], torch.from_numpy(picture).permute(2, 0, 1).float())
    predictor = SamPredictor(sam)
    predictor.set_image(picture)
    assert np.abs(embedding.embedding - predictor.embedding.numpy()[0]).max() < 1e-4

    photo = dimmed(PHOTO)
    embedding = model.encode_image(photo)
    predictor.set_image(photo)
    assert np.abs(embedding.embedding - predictor.embedding.numpy()[0]).max() < 1e-4
