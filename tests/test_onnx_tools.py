"""`sam-export --format onnx`'s annotation-tool folders, run by the tools' own inference code
(AnyLabeling 0.4.43, X-AnyLabeling 4.2.1, osam 0.8; see annotation_tools.py for how they are
loaded) on a real photo of an odd size, against our `SamPredictor`.

Like with like: every tool ends its points with a padding point, also after a box, where
segment-anything's predictor pads only prompts without a box; the reference predictor is given
that padding point too. The tools show one mask, the one segment-anything's ONNX export picks
(`return_single_mask`): the best of the three for one click, the single-mask output once the
prompt has 3 points or more (padding included), so the reference picks the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from annotation_tools import (
    RecordingSession,
    assert_same_mask,
    draw_prompts_picture,
    load_tool_module,
    reference,
    tool_paths,
)
from conftest import call_main, randomise, tiny_sam
from PIL import Image

from sam_train.cli import export as export_cli
from sam_train.predictor import SamPredictor
from sam_train.viz.labels import save_png
from sam_train.weights.safetensors_io import save_weights

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

PHOTO = skimage.data.chelsea()  # 300 x 451 RGB: an odd size, the tools' canvas is 684 x 1024
TOOL_CANVAS = (684, 1024)  # (h, w) AnyLabeling / X-AnyLabeling warp every picture into

# (x, y) in photo pixels; 1 foreground, 0 background; box xyxy
PROMPTS = {
    "one click": dict(points=[[225, 130]], labels=[1]),
    "three clicks": dict(points=[[225, 130], [120, 90], [330, 250]], labels=[1, 1, 0]),
    "box": dict(box=[90, 30, 380, 290]),
    "box and a click": dict(points=[[225, 130]], labels=[1], box=[90, 30, 380, 290]),
}


@pytest.fixture(scope="module", params=[256, 1024], ids=lambda s: f"{s}px")
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"tools{request.param}")
    sam = randomise(tiny_sam(image_size=request.param).eval(), seed=request.param)
    src = tmp / "my_sam.safetensors"
    save_weights(src, sam.state_dict(), {"architecture": sam.architecture})
    out = tmp / "model"
    run = call_main(export_cli.main, [src, "--format", "onnx", "--out", out])
    assert run.returncode == 0, run.stderr
    assert f"{out}/anylabeling/model.yaml" in run.stdout  # where to point the tools
    return sam, out


# ----------------------------------------------------------------------------------------------
# AnyLabeling and X-AnyLabeling


def test_model_yaml_is_what_both_tools_accept(exported):
    _, out = exported
    config, paths = tool_paths(out)
    # the custom-model loaders of both tools: these keys, this type, a plain name
    for key in ("type", "name", "display_name", "encoder_model_path", "decoder_model_path"):
        assert key in config, key
    assert config["type"] == "segment_anything"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", config["name"]), config["name"]
    assert config["name"] == "sam_train-my_sam"
    for key in ("input_size", "max_width", "max_height"):  # read by their SegmentAnything
        assert isinstance(config[key], int)
    for path in paths:
        assert path.is_file()
        onnx.checker.check_model(str(path))  # X-AnyLabeling's check before loading
    decoder_inputs = {i.name for i in onnx.load(str(paths[1])).graph.input}
    # AnyLabeling picks its SAM 1 code unless it sees SAM 2 / SAM 3 decoder inputs
    assert not decoder_inputs & {"high_res_feats_0", "backbone_fpn_0", "language_mask"}


@pytest.mark.parametrize("hw", [(300, 451), (451, 300), (684, 1024), (17, 33)])
def test_tool_encoder_embeds_any_picture_size_as_the_predictor(exported, hw):
    sam, out = exported
    _, (encoder_path, _) = tool_paths(out)
    session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    picture = np.asarray(Image.fromarray(PHOTO).resize(hw[::-1], Image.BILINEAR))
    (embedding,) = session.run(None, {"input_image": picture.astype(np.float32)})
    predictor = SamPredictor(sam)
    predictor.set_image(picture)
    assert np.abs(embedding - predictor.embedding.numpy()).max() < 1e-4


@pytest.mark.parametrize("clicks", [1, 3])
def test_tool_decoder_is_the_official_decoder_in_the_tool_frame_with_a_mask_prompt(
    exported, clicks
):
    """A mask prompt (which the tools' SAM code never sends, but their decoder interface has):
    the tool decoder equals decoder.onnx fed the points and the mask converted by hand to the
    model's frame, then the tools' one-mask rule."""
    sam, out = exported
    size, grid = sam.image_encoder.img_size, sam.prompt_encoder.image_embedding_size[0]
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(1, 32, grid, grid, generator=g).numpy()
    mask = (torch.randn(1, 1, 256, 256, generator=g) * 3).numpy()
    orig = np.array(TOOL_CANVAS, np.float32)
    coords = np.array([[[300.0, 200.0], [520.0, 410.0], [80.0, 600.0], [0.0, 0.0]]], np.float32)
    coords = np.concatenate([coords[:, :clicks], coords[:, 3:]], axis=1)
    labels = np.array([[1.0, 0.0, 1.0][:clicks] + [-1.0]], np.float32)
    feeds = dict(
        image_embeddings=embedding,
        point_coords=coords,
        point_labels=labels,
        mask_input=mask,
        has_mask_input=np.array([1.0], np.float32),
        orig_im_size=orig,
    )
    _, (_, decoder_path) = tool_paths(out)
    masks, iou, low_res = ort.InferenceSession(str(decoder_path)).run(None, feeds)

    model_hw = [int(side * size / 1024 + 0.5) for side in TOOL_CANVAS]  # the canvas at S
    small = torch.nn.functional.interpolate(
        torch.from_numpy(mask), size=(4 * grid,) * 2, mode="bilinear", align_corners=False
    )
    official = {
        **feeds,
        "point_coords": coords * np.array([model_hw[1] / 1024, model_hw[0] / 684], np.float32),
        "mask_input": small.numpy(),
    }
    all_masks, all_iou, _ = ort.InferenceSession(str(out / "decoder.onnx")).run(None, official)
    best = int(np.argmax(all_iou[0, 1:])) + 1 if clicks == 1 else 0
    assert masks.shape == (1, 1, *TOOL_CANVAS) and low_res.shape == (1, 1, 256, 256)
    assert abs(iou[0, 0] - all_iou[0, best]) < 1e-5
    assert np.abs(masks[0, 0] - all_masks[0, best]).max() < 1e-4


@pytest.mark.parametrize("tool", ["anylabeling", "x-anylabeling"])
def test_tool_masks_equal_the_predictor_in_the_tool_frame(exported, tool):
    sam, out = exported
    sam_onnx = load_tool_module(tool)
    _, (encoder_path, decoder_path) = tool_paths(out)
    model = sam_onnx.SegmentAnythingONNX(str(encoder_path), str(decoder_path))
    assert model.input_size == TOOL_CANVAS and model.target_size == 1024  # what we designed for
    model.encoder_session = encoder = RecordingSession(model.encoder_session)
    model.decoder_session = decoder = RecordingSession(model.decoder_session)

    embedding = model.encode(PHOTO)
    (canvas,) = encoder.calls[0][0].values()  # the picture as the tool fed it: [684, 1024, 3]
    assert canvas.shape == (*TOOL_CANVAS, 3) and np.array_equal(canvas, np.round(canvas))
    predictor = SamPredictor(sam)
    predictor.set_image(canvas.astype(np.uint8))  # our predictor, in the tool's frame
    assert np.abs(embedding["image_embedding"] - predictor.embedding.numpy()).max() < 1e-4
    scale = min(TOOL_CANVAS[0] / PHOTO.shape[0], TOOL_CANVAS[1] / PHOTO.shape[1])

    shown_masks = {}
    for name, prompt in PROMPTS.items():
        marks = [
            {"type": "point", "data": xy, "label": lab}
            for xy, lab in zip(prompt.get("points", []), prompt.get("labels", []))
        ]
        if "box" in prompt:
            marks.append({"type": "rectangle", "data": prompt["box"]})
        shown = model.predict_masks(embedding, marks)
        assert shown.shape == (1, 1, *PHOTO.shape[:2]), name  # the app shows masks[0][0]
        _, (tool_masks, tool_iou, low_res) = decoder.calls[-1]
        assert tool_masks.shape == (1, 1, *TOOL_CANVAS) and low_res.shape == (1, 1, 256, 256)
        ref_mask, ref_score = reference(predictor, prompt, scale)
        assert_same_mask(tool_masks[0, 0], tool_iou[0, 0], ref_mask, ref_score)
        shown_masks[name] = shown[0][0] > 0  # what the app turns into a polygon

    pictures = os.environ.get("SAM_TRAIN_PICTURES")
    if pictures and tool == "anylabeling":
        size = sam.image_encoder.img_size
        picture = draw_prompts_picture(PHOTO, PROMPTS, shown_masks)
        save_png(picture, Path(pictures) / f"labelling_anylabeling_{size}px.png")


# ----------------------------------------------------------------------------------------------
# osam (labelme's engine)


def test_osam_runs_the_export_by_name(exported, tmp_path, monkeypatch):
    osam = pytest.importorskip("osam")
    from sam_train.weights.osam_model import register_osam_model

    sam, out = exported
    monkeypatch.setenv("HOME", str(tmp_path))  # osam's blob cache lives under ~/.cache/osam
    monkeypatch.setattr(osam.apis, "registered_model_types", list(osam.apis.registered_model_types))
    size = sam.image_encoder.img_size
    model_type = register_osam_model(out, name=f"sam-train:test{size}")
    assert osam.apis.get_model_type_by_name(f"sam-train:test{size}") is model_type
    assert model_type.get_size() is not None  # labelme's test for "downloaded already"
    model = model_type()  # osam finds both graphs in its cache by hash: nothing downloaded
    decoder = RecordingSession(model._inference_sessions["decoder"])
    model._inference_sessions["decoder"] = decoder

    predictor = SamPredictor(sam)
    predictor.set_image(PHOTO)  # osam's frame is the photo itself
    embedding = model.encode_image(PHOTO)
    assert np.abs(embedding.embedding - predictor.embedding.numpy()[0]).max() < 1e-4
    for name, prompt in PROMPTS.items():
        points = list(prompt.get("points", []))
        labels = list(prompt.get("labels", []))
        if "box" in prompt:  # labelme's box: two corner points labelled 2 and 3
            points += [prompt["box"][:2], prompt["box"][2:]]
            labels += [2, 3]
        response = model.generate(
            osam.types.GenerateRequest(
                model=model.name,
                image_embedding=embedding,
                prompt=osam.types.Prompt(
                    points=np.asarray(points, np.float32), point_labels=np.asarray(labels)
                ),
            )
        )
        _, (tool_masks, tool_iou, _) = decoder.calls[-1]
        ref_mask, ref_score = reference(predictor, prompt, 1.0)
        # osam passes has_mask_input = -1 for "no mask": the graph reads it as 0
        assert_same_mask(tool_masks[0, 0], tool_iou[0, 0], ref_mask, ref_score)
        annotation = response.annotations[0]  # what labelme turns into a polygon
        box = annotation.bounding_box
        crop = (tool_masks[0, 0] > 0)[box.ymin : box.ymax + 1, box.xmin : box.xmax + 1]
        assert np.array_equal(annotation.mask, crop), name


def test_register_osam_model_names_a_wrong_folder(tmp_path):
    pytest.importorskip("osam")
    from sam_train.weights.osam_model import register_osam_model

    with pytest.raises(FileNotFoundError, match="sam-export --format onnx"):
        register_osam_model(tmp_path)
