"""Segment everything: our `MaskGenerator` against `segment_anything.SamAutomaticMaskGenerator`.

    python benchmarks/bench_amg.py [--size b] [--image-size 1024] [--points 32,16] [--reps 2]
                                   [--permissive] [--json out.json]

Same weights (ours mapped into the official layout), same image (scikit-image's astronaut at
1024 x 1024), same settings; fp32 CPU, one torch thread by default. The contenders alternate
in one process (ours, theirs, then theirs, ours, ...); each figure is the median of `--reps`
runs. The cost split: encoder = embedding the image, decoder = prompt encoder + mask decoder
to low-res logits, filtering = the rest (upsampling, IoU / stability filters, boxes, NMS,
RLE). The two generators' masks of the last run are compared (counts, worst best-match IoU).

Random weights give few masks at SAM's thresholds (0.88 / 0.95), so filtering is cheap there
for us (we upsample only the masks whose predicted IoU passes); `--permissive` (thresholds 0)
makes every mask go through every stage, the other end of the range. `--trained` uses a model
that segments: the tests' tiny SAM (64 px) trained for seconds on flat-coloured shapes
(`tests/amg_helpers.py`), on one of its scenes scaled up to `--image-size` on the long side, at
the thresholds the parity test uses for it (0.3 / 0.6, offset 0.5), where hundreds of masks
pass the filters and go through upsampling, stability, boxes and NMS.

    python benchmarks/bench_amg.py --trained --image-size 1024 --points 32,16 --reps 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from benchmarks.bench_sam import official_sam
from benchmarks.common import THREADS_HELP, interleaved, machine, median, spread
from sam_train.automatic import MaskGenerator
from sam_train.models.sam.sam import build_sam_vit


def test_image(size: int) -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size, size)))


class TheirSplit:
    """Encoder and decoder seconds inside segment-anything's generator (wrapped methods)."""

    def __init__(self, generator) -> None:
        self.seconds = {"encoder": 0.0, "decoder": 0.0}
        predictor, sam = generator.predictor, generator.predictor.model
        self._wrap(predictor, "set_image", "encoder")
        self._wrap(sam, "prompt_encoder", "decoder")
        self._wrap(sam, "mask_decoder", "decoder")

    def _wrap(self, owner, name: str, stage: str) -> None:
        target = getattr(owner, name)
        if isinstance(target, torch.nn.Module):  # a module is called: time its forward
            owner, name = target, "forward"
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds[stage] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)


def trained_model_and_scene(long_side: int) -> tuple[torch.nn.Module, np.ndarray]:
    """The tests' briefly trained 64-px SAM and a shapes scene at `long_side` px (its long
    side), the scene it was trained on scaled up by pixel repetition."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from amg_helpers import SCENE_HW, shapes_scene, trained_tiny_sam

    model = trained_tiny_sam(steps=160)
    scene, _ = shapes_scene(*SCENE_HW, seed=0)
    k = max(long_side // max(SCENE_HW), 1)
    return model, scene.repeat(k, axis=0).repeat(k, axis=1)


def compare(ours: list[dict], theirs: list[dict]) -> dict:
    from pycocotools import mask as mask_utils

    out = {"masks_ours": len(ours), "masks_theirs": len(theirs)}
    if ours and theirs:
        iou = mask_utils.iou(
            [r["segmentation"] for r in ours],
            [r["segmentation"] for r in theirs],
            [0] * len(theirs),
        )
        out["worst_best_match_iou"] = float(min(iou.max(1).min(), iou.max(0).min()))
    return out


def run(
    size: str,
    image_size: int,
    points: int,
    reps: int,
    permissive: bool,
    batch: int,
    device: str = "cpu",
    trained: bool = False,
) -> dict:
    from segment_anything import SamAutomaticMaskGenerator

    torch.manual_seed(0)
    settings = dict(points_per_side=points, output_mode="coco_rle")
    if trained:
        ours_model, image = trained_model_and_scene(image_size)
        settings.update(pred_iou_thresh=0.3, stability_score_thresh=0.6, stability_score_offset=0.5)
    else:
        ours_model, image = build_sam_vit(size, image_size=image_size), test_image(image_size)
    ours_model = ours_model.eval()
    theirs_model = official_sam(ours_model).eval().to(device)
    ours_model = ours_model.to(device)
    if permissive:
        settings.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ours = MaskGenerator(ours_model, points_per_batch=batch, **settings)
    theirs = SamAutomaticMaskGenerator(theirs_model, **settings)
    split = TheirSplit(theirs)
    with torch.no_grad():
        ours_split = {k: [] for k in ("encoder", "decoder", "filtering")}
        theirs_split = {k: [] for k in ("encoder", "decoder", "filtering")}
        masks: dict[str, list[dict]] = {}

        def run_ours():
            masks["ours"] = ours.generate(image)
            for k, v in ours.timings.items():
                ours_split[k].append(v)

        def run_theirs():
            split.seconds = {"encoder": 0.0, "decoder": 0.0}
            t0 = time.perf_counter()
            masks["theirs"] = theirs.generate(image)
            total = time.perf_counter() - t0
            theirs_split["encoder"].append(split.seconds["encoder"])
            theirs_split["decoder"].append(split.seconds["decoder"])
            theirs_split["filtering"].append(total - sum(split.seconds.values()))

        # no warm-up round: one run is tens of seconds, first-call costs are noise in it
        times = interleaved({"ours": run_ours, "theirs": run_theirs}, reps=reps, warmup=0)
        check = compare(masks["ours"], masks["theirs"])
        check["stage_counts_ours"] = dict(ours.stage_counts)  # masks left after each stage
    t_ours, t_theirs = median(times["ours"]), median(times["theirs"])
    return {
        "size": "tiny, trained on shapes (64 px)" if trained else size,
        "image_size": image_size,
        "image_hw": list(image.shape[:2]),
        "points_per_side": points,
        "points_per_batch_ours": batch,
        "permissive": permissive,
        **check,
        "images_per_s_ours": 1 / t_ours,
        "images_per_s_theirs": 1 / t_theirs,
        "ratio": t_theirs / t_ours,
        "spread_ours": spread(times["ours"]),
        "spread_theirs": spread(times["theirs"]),
        "split_ours_s": {k: median(v) for k, v in ours_split.items()},
        "split_theirs_s": {k: median(v) for k, v in theirs_split.items()},
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="b", help="SAM size: tiny, b, l, h")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--points", default="32,16", help="points_per_side values")
    parser.add_argument("--batch", type=int, default=64, help="our points_per_batch")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--permissive", action="store_true", help="thresholds 0: keep everything")
    parser.add_argument("--trained", action="store_true", help="a model that segments (see above)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": machine(), "runs": []}
    print(json.dumps(results["machine"]), flush=True)
    for points in [int(p) for p in args.points.split(",")]:
        r = run(
            args.size,
            args.image_size,
            points,
            args.reps,
            args.permissive,
            args.batch,
            trained=args.trained,
        )
        results["runs"].append(r)
        so, st = r["split_ours_s"], r["split_theirs_s"]
        print(
            f"vit_{r['size']} {r['image_hw'][0]}x{r['image_hw'][1]} px, {points}x{points} points"
            f"{' (permissive)' if r['permissive'] else ''}: ours {r['images_per_s_ours']:.4f} "
            f"images/s, theirs {r['images_per_s_theirs']:.4f} -> {r['ratio']:.2f}x "
            f"(spread {r['spread_ours']:.0%} / {r['spread_theirs']:.0%}); masks "
            f"{r['masks_ours']} / {r['masks_theirs']}, worst match IoU "
            f"{r.get('worst_best_match_iou', float('nan')):.4f}; kept by stage {r['stage_counts_ours']}\n"
            f"  split s (encoder / decoder / filtering): ours "
            f"{so['encoder']:.1f} / {so['decoder']:.1f} / {so['filtering']:.1f}, theirs "
            f"{st['encoder']:.1f} / {st['decoder']:.1f} / {st['filtering']:.1f}",
            flush=True,
        )
    results["machine"]["load_average_1min_end"] = machine()["load_average_1min"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
