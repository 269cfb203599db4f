"""The annotation tools' own inference code, loaded without their GUIs.

AnyLabeling and X-AnyLabeling both ship a package named `anylabeling` (one would overwrite the
other in a venv) and both require PyQt6 (X-AnyLabeling also PyQt6-WebEngine), which their SAM
inference code does not use. `make install` therefore installs each wheel from PyPI without
dependencies into its own folder, <venv>/annotation-tools/<tool>/ (see the Makefile), and the
tests load only the SAM module, `anylabeling/services/auto_labeling/sam_onnx.py`, from there:
its parent packages are entered as bare namespaces so that their GUI-importing `__init__`
files do not run. The module itself, and what it imports (`runtime.py`, `app_info.py` for
AnyLabeling), run as shipped. osam has light dependencies and is a plain dev dependency.

Also here: how a tool's mask is compared with `SamPredictor`'s (`reference`,
`assert_same_mask`) and where the tools find the graphs (`tool_paths`).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

TOOLS_DIR = Path(sys.prefix) / "annotation-tools"
SAM_MODULE = "anylabeling.services.auto_labeling.sam_onnx"


def _is_anylabeling(name: str) -> bool:
    return name == "anylabeling" or name.startswith("anylabeling.")


def load_tool_module(tool: str, module: str = SAM_MODULE) -> types.ModuleType:
    """`module` from <venv>/annotation-tools/<tool>/, its parent packages' __init__ skipped."""
    root = TOOLS_DIR / tool
    if not (root / "anylabeling").is_dir():
        pytest.skip(f"{tool} is not installed in {root} (`make install` puts it there)")
    saved = {k: v for k, v in sys.modules.items() if _is_anylabeling(k)}
    for name in saved:
        del sys.modules[name]
    try:
        parts = module.split(".")
        for i in range(1, len(parts)):
            package = types.ModuleType(".".join(parts[:i]))
            package.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[package.__name__] = package
        return importlib.import_module(module)
    finally:  # the two tools share package names: leave none of them behind
        for name in [k for k in sys.modules if _is_anylabeling(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


class RecordingSession:
    """An onnxruntime session that keeps what the tool fed it and what it answered."""

    def __init__(self, session) -> None:
        self.session = session
        self.calls: list[tuple[dict, list]] = []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, output_names, input_feed, *args, **kwargs):  # onnxruntime's argument names
        outputs = self.session.run(output_names, input_feed, *args, **kwargs)
        feeds = {k: v.copy() for k, v in input_feed.items()}
        self.calls.append((feeds, [o.copy() for o in outputs]))
        return outputs


def draw_prompts_picture(photo: np.ndarray, prompts: dict, masks: dict) -> np.ndarray:
    """One tile per prompt: the photo, the mask the app shows (magenta outline over a light
    fill) and the prompt (yellow clicks, blue background clicks, yellow box); 2 tiles a row.
    prompts: name -> dict(points, labels, box) in photo pixels; masks: name -> [H, W] bool."""
    from sam_train.viz.sam_masks import PRED_COLOUR, draw_box, draw_outline, draw_point

    tiles = []
    for name, mask in masks.items():
        rgb = photo.copy()
        rgb[mask] = (0.65 * rgb[mask] + 0.35 * np.array(PRED_COLOUR)).astype(np.uint8)
        draw_outline(rgb, mask, PRED_COLOUR)
        tile = Image.fromarray(rgb)
        draw = ImageDraw.Draw(tile)
        prompt = prompts[name]
        if "box" in prompt:
            draw_box(draw, prompt["box"])
        for (x, y), label in zip(prompt.get("points", []), prompt.get("labels", [])):
            draw_point(draw, x, y, positive=label == 1)
        draw.text((6, 4), name, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        tiles.append(np.asarray(tile))
    tiles += [np.zeros_like(tiles[0])] * (len(tiles) % 2)
    rows = [np.concatenate(tiles[i : i + 2], axis=1) for i in range(0, len(tiles), 2)]
    return np.concatenate(rows, axis=0)


def tool_paths(out):
    """The graph paths the tools resolve from model.yaml (relative to its folder)."""
    config_file = out / "anylabeling" / "model.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8-sig"))
    return config, [
        config_file.parent / config[k] for k in ("encoder_model_path", "decoder_model_path")
    ]


def reference(predictor, prompt: dict, scale: float) -> tuple[np.ndarray, float]:
    """`SamPredictor`'s mask and score for a tool prompt (photo pixels * scale), the way the
    tools ask: padding point after a box too, one mask chosen by segment-anything's rule."""
    points = [[x * scale, y * scale] for x, y in prompt.get("points", [])]
    labels = list(prompt.get("labels", []))
    box = None
    if "box" in prompt:
        box = np.asarray(prompt["box"], np.float64) * scale
        points, labels = points + [[0.0, 0.0]], labels + [-1]  # the tools' padding point
    tool_points = len(points) + (2 if box is not None else 0) + (box is None)
    multimask = tool_points <= 2
    masks, scores, _ = predictor.predict(
        point_coords=np.asarray(points) if points else None,
        point_labels=np.asarray(labels) if labels else None,
        box=box,
        multimask_output=multimask,
    )
    best = int(np.argmax(scores)) if multimask else 0
    return masks[best], float(scores[best])


def assert_same_mask(tool_logits, tool_score, ref_mask, ref_score) -> None:
    """The tool's mask logits [H, W] and score agree with the reference's (bool [H, W], score)."""
    agree = ((tool_logits > 0) == ref_mask).mean()
    assert agree >= 0.995, agree
    assert abs(tool_score - ref_score) <= 1e-3, (tool_score, ref_score)
