"""`sam-export --format onnx`: the two graphs in onnxruntime against our PyTorch SAM and against
segment-anything's own ONNX exporter, at a tiny size with random (non-trivial) weights."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import call_main, randomise, run_cli, tiny_sam
from PIL import Image

from sam_train.predictor import SamPredictor
from sam_train.weights.onnx_export import DECODER_INPUTS, DECODER_OUTPUTS
from sam_train.weights.safetensors_io import save_weights

ort = pytest.importorskip("onnxruntime")

SIZE = 64
ORIG_HW = (30, 40)  # resized to 48 x 64, padded to 64 x 64
SCALE = SIZE / max(ORIG_HW)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    sam = randomise(tiny_sam().eval())
    src = tmp / "sam.safetensors"
    save_weights(src, sam.state_dict(), {"architecture": sam.architecture})
    out = tmp / "model"
    # the console script as a user runs it (sam-export's one run in a process of its own)
    run = run_cli("sam-export", src, "--format", "onnx", "--out", out, "--quantize")
    assert run.returncode == 0, run.stderr
    return sam, src, out


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def official_inputs(points, labels, box, mask, embedding):
    """The decoder interface's inputs, built the way segment-anything's ONNX demo builds them."""
    coords = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32)
    labs = np.zeros((0,), np.float32) if labels is None else np.asarray(labels, np.float32)
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, np.float32).reshape(2, 2)])
        labs = np.concatenate([labs, np.array([2, 3], np.float32)])
    else:
        coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
        labs = np.concatenate([labs, np.array([-1], np.float32)])
    grid = embedding.shape[-1]
    return {
        "image_embeddings": embedding,
        "point_coords": coords[None] * SCALE,
        "point_labels": labs[None],
        "mask_input": np.zeros((1, 1, 4 * grid, 4 * grid), np.float32) if mask is None else mask,
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        "orig_im_size": np.array(ORIG_HW, np.float32),
    }


PROMPTS = {
    "one point": dict(points=[[12.0, 20.0]], labels=[1]),
    "five points": dict(
        points=[[3, 4], [30, 9], [17, 25], [39, 2], [8, 28]], labels=[1, 0, 1, 0, 1]
    ),
    "box": dict(box=[4.0, 6.0, 31.0, 22.0]),
    "points+box": dict(
        points=[[12.0, 20.0], [25.0, 5.0]], labels=[1, 0], box=[4.0, 6.0, 31.0, 22.0]
    ),
    "point+mask input": dict(points=[[12.0, 20.0]], labels=[1], mask=True),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_decoder_agrees_with_our_model(exported, name):
    sam, _, out = exported
    prompt = dict(PROMPTS[name])
    g = torch.Generator().manual_seed(2)
    embedding = torch.randn(1, 32, 4, 4, generator=g)
    mask = torch.randn(1, 1, 16, 16, generator=g) * 3 if prompt.pop("mask", False) else None
    feeds = official_inputs(
        prompt.get("points"),
        prompt.get("labels"),
        prompt.get("box"),
        None if mask is None else mask.numpy(),
        embedding.numpy(),
    )
    masks, iou, low_res = session(out / "decoder.onnx").run(None, feeds)

    points = None
    if "points" in prompt:
        coords = torch.tensor(prompt["points"], dtype=torch.float32)[None] * SCALE
        points = (coords, torch.tensor(prompt["labels"])[None])
    box = torch.tensor(prompt["box"])[None] * SCALE if "box" in prompt else None
    with torch.no_grad():
        ref_low, ref_iou = sam.decode(
            embedding, points=points, boxes=box, mask_inputs=mask, multimask_output=None
        )  # all 4 outputs, the single-mask one first
        full = torch.nn.functional.interpolate(ref_low, size=(SIZE, SIZE), mode="bilinear")
        ref_masks = torch.nn.functional.interpolate(
            full[..., :48, :64], size=ORIG_HW, mode="bilinear"
        )
    assert masks.shape == (1, 4, *ORIG_HW) and low_res.shape == (1, 4, 16, 16)
    assert np.abs(low_res - ref_low.numpy()).max() < 1e-4
    assert np.abs(iou - ref_iou.numpy()).max() < 1e-4
    assert np.abs(masks - ref_masks.numpy()).max() < 1e-4
    assert ((masks > 0) == (ref_masks.numpy() > 0)).mean() > 0.999


def test_encoder_and_preprocess_json_reproduce_the_predictor(exported):
    sam, src, out = exported
    prep = json.loads((out / "preprocess.json").read_text())
    image = (np.random.default_rng(0).random((*ORIG_HW, 3)) * 255).astype(np.uint8)
    # the recipe the JSON states, done by hand
    s = prep["image_size"] / max(ORIG_HW)
    nh, nw = (int(np.floor(side * s + 0.5)) for side in ORIG_HW)
    x = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    x = (x * prep["pixel_scale"] - np.array(prep["mean"])) / np.array(prep["std"])
    padded = np.zeros((prep["image_size"],) * 2 + (3,), np.float32)
    padded[:nh, :nw] = x
    images = np.stack([padded.transpose(2, 0, 1)] * 2).astype(np.float32)  # batch of 2

    (embeddings,) = session(out / "encoder.onnx").run(None, {"images": images})
    predictor = SamPredictor.from_checkpoint(src)
    predictor.set_image(image)
    assert embeddings.shape == (2, *prep["embedding_shape"])
    assert np.abs(embeddings - predictor._embedding.numpy()).max() < 1e-4

    # and the decoder on that embedding gives the predictor's masks for a click
    feeds = official_inputs([[12.0, 20.0]], [1], None, None, embeddings[:1])
    onnx_masks, onnx_iou, _ = session(out / "decoder.onnx").run(None, feeds)
    masks, scores, _ = predictor.predict(point_coords=[[12.0, 20.0]], point_labels=[1])
    assert np.abs(onnx_iou[0, 1:] - scores).max() < 1e-4
    assert ((onnx_masks[0, 1:] > prep["mask_threshold"]) == masks).mean() > 0.999


def test_decoder_matches_segment_anything_exporter(exported, tmp_path):
    seg_onnx = pytest.importorskip("segment_anything.utils.onnx")
    from sam_train.weights.export import export
    from sam_train.weights.official import build_official_sam

    sam, src, out = exported
    official_path = export(src, "sam", tmp_path / "sam.pth")
    official = build_official_sam(sam.architecture)
    official.load_state_dict(torch.load(official_path, weights_only=True), strict=True)
    theirs_path = tmp_path / "theirs.onnx"
    example = {
        k: torch.as_tensor(v)
        for k, v in official_inputs(
            [[12.0, 20.0]], [1], None, None, np.zeros((1, 32, 4, 4), np.float32)
        ).items()
    }
    with warnings.catch_warnings():  # the official export script's settings
        warnings.simplefilter("ignore")
        torch.onnx.export(
            seg_onnx.SamOnnxModel(official.eval(), return_single_mask=False),
            tuple(example.values()),
            str(theirs_path),
            input_names=DECODER_INPUTS,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    ours, theirs = session(out / "decoder.onnx"), session(theirs_path)
    assert [i.name for i in ours.get_inputs()] == [i.name for i in theirs.get_inputs()]
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    g = torch.Generator().manual_seed(5)
    embedding = torch.randn(1, 32, 4, 4, generator=g).numpy()
    mask = torch.randn(1, 1, 16, 16, generator=g).numpy()
    for prompt in PROMPTS.values():
        feeds = official_inputs(
            prompt.get("points"),
            prompt.get("labels"),
            prompt.get("box"),
            mask if prompt.get("mask") else None,
            embedding,
        )
        for a, b in zip(ours.run(None, feeds), theirs.run(None, feeds)):
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_quantized_decoder_has_the_interface_and_close_masks(exported):
    _, _, out = exported
    fp32, int8 = session(out / "decoder.onnx"), session(out / "decoder_quantized.onnx")
    assert [i.name for i in int8.get_inputs()] == DECODER_INPUTS
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(out / "decoder_quantized.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops, ops  # int8 weights in use
    embedding = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(3)).numpy()
    feeds = official_inputs([[12.0, 20.0]], [1], None, None, embedding)
    (m32, _, _), (m8, _, _) = fp32.run(None, feeds), int8.run(None, feeds)
    assert ((m32 > 0) == (m8 > 0)).mean() > 0.9


def test_a_checkpoint_that_is_not_a_sam_is_refused_in_one_line(tmp_path, capfd):
    from conftest import tiny_mae

    src = tmp_path / "mae.safetensors"
    save_weights(src, {f"encoder.{k}": v for k, v in tiny_mae().encoder.state_dict().items()}, {})
    from sam_train.cli.export import main

    run = call_main(main, [src, "--format", "onnx", "--out", tmp_path / "m"], capfd)
    assert run.returncode == 2
    assert "not a SAM" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "m").exists()


def test_a_folder_holding_other_files_is_never_replaced(exported, tmp_path, capsys):
    from sam_train.cli.export import main

    _, src, _ = exported
    keep = tmp_path / "photos"
    keep.mkdir()
    (keep / "holiday.jpg").write_bytes(b"precious")
    for fmt in ("onnx", "hf"):
        with pytest.raises(SystemExit) as exit_:
            main([str(src), "--format", fmt, "--out", str(keep)])
        assert exit_.value.code == 2
        assert "pick a new folder name" in capsys.readouterr().err
        assert (keep / "holiday.jpg").read_bytes() == b"precious"
