"""ViT students of LiteMedSAM's size by several routes, on real nuclei (an experiment, not a
test):

    python benchmarks/student_routes.py [--out outputs/student_routes] [--seeds 0 1 2]
        [--pretrain-steps 24] [--stage2-epochs 4] [--routes a b c d e f g]
        [--stage2 scratch|teacher-decoder] [--only-pretrain] [--table-only]

Data: `released_sam.py`'s split of stardist's 2-D example (12 training tiles of 128 px, 4
held-out tiles, 31 held-out masks; the bottom-right quadrant is never read before evaluation).
Teacher: LiteMedSAM (lite_medsam.pth, TinyViT, 256 px, 64 x 64 x 256 embeddings).
Student: a ViT/16 at 256 px (width 192, depth 12, 3 heads, windows of 8 tokens, global
attention in blocks 2, 5, 8, 11, no relative positions: exactly stage 1's ViT), its neck to 256
channels and `model.neck_upsample=4` (16 x 16 tokens -> LiteMedSAM's 64 x 64 grid), LiteMedSAM's
prompt-encoder and mask-decoder sizes.

Routes to the student's encoder, the same images (the 12 training tiles, unlabelled) and the
same number of steps of the same batch for b-g:
  (a) random init;
  (b) MAE (stage 1) on the tiles;
  (c) SAMI with LiteMedSAM as teacher on the tiles;
  (d) distillation of LiteMedSAM's embeddings (stage=distill: its prompt encoder and mask
      decoder copied in), (e) the same with the decoder phase for the second half;
  (f) (d) with the student's last LayerNorm2d started from the teacher's
      (model.teacher_output_norm=true), (g) (f) with the decoder phase for the second half.
Then the same stage 2 for every route (`--stage2`, RECIPES below): "scratch" trains the
prompt encoder and decoder each route's checkpoint has (random for a-c) with the encoder
frozen; "teacher-decoder" starts every route from LiteMedSAM's prompt encoder and decoder
(model.decoder_from; e and g keep the decoder their decoder phase trained) and trains neck,
upsampling, prompt encoder and decoder. Exact boxes only (released_sam.py's recipe); then
`sam-eval` on the held-out tiles: box, centre point (most confident of 3) and 1..5 corrective
clicks. Beside them: the filled box, LiteMedSAM itself, and the distilled students before
stage 2, with the distilled student's held-out embedding MSE.

Every run is a console-tool call; a finished run is kept (its folder holds `done`), so the
script resumes. The table (mean and range over seeds) goes to <out>/results.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from released_sam import BOX_ONLY, TILE, baselines, tile_recipe, tile_shards, tool  # noqa: E402
from released_sam import run as run_tool  # noqa: E402
from teacher_student import cell  # noqa: E402
from teacher_student import run as run_sam_train  # noqa: E402

SIZE = 256  # px: LiteMedSAM's input; the 128-px tiles are scaled up to it
ENCODER = dict(embed_dim=192, depth=12, num_heads=3)
STUDENT_SAM = [
    "model=sam_vit_tiny",
    f"model.image_size={SIZE}",
    "model.patch_size=16",
    "model.window_size=8",
    "model.use_rel_pos=false",
    "model.neck_upsample=4",
    "model.prompt_embed_dim=256",
    "model.decoder_mlp_dim=2048",
    "model.iou_head_hidden_dim=256",
    "model.pixel_norm=imagenet",
]
STUDENT_MAE = [
    "model=mae_vit_tiny",
    f"model.img_size={SIZE}",
    "model.patch_size=16",
    "model.decoder_embed_dim=128",
    "model.decoder_depth=2",
    "model.decoder_num_heads=4",
]
PRETRAIN_BATCH = 2
STEPS_PER_EPOCH = 6  # 12 tiles a pass, 2 a step: every route sees each tile once an epoch
EVAL_TASKS = "eval.tasks=[point,box,clicks]"
CLICKS = 5


def run_train(args: list[str], folder: Path, log: Path) -> None:
    """`sam-train ARGS` into FOLDER (kept when done); a run too short to log a metric is fine."""
    try:
        run_sam_train(args, folder, log)
    except FileNotFoundError:
        pass


def unlabelled_tiles(out: Path) -> Path:
    """The 12 training tiles (128 px) as a folder of images, for the stage-1 routes."""
    folder = out / "unlabelled"
    if not folder.exists():
        tmp = out / "unlabelled.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for path in sorted((out / "raw" / "train" / "images").glob("*.png")):
            img = np.asarray(Image.open(path))
            for y in range(0, img.shape[0], TILE):
                for x in range(0, img.shape[1], TILE):
                    tile = img[y : y + TILE, x : x + TILE]
                    Image.fromarray(tile).save(tmp / f"{path.stem}_{y}_{x}.png")
        tmp.rename(folder)
    return folder


def prepare(out: Path) -> Path:
    """Split, shards (train / val) and the unlabelled folder; returns the shard folder."""
    shards = tile_shards(out)
    if not (shards / "train_teacher").exists():  # distillation reads LiteMedSAM's embeddings
        from lite_medsam_helpers import lite_medsam_path

        run_tool(
            tool("sam-prep"),
            "teacher-embed",
            "--teacher",
            str(lite_medsam_path()),
            "--image-size",
            str(SIZE),
            "--no-progress",
            str(shards / "train"),
            str(shards / "train_teacher"),
        )
    unlabelled_tiles(out)
    return shards


def evaluate(ckpt: Path | str, shards: Path, folder: Path, tasks: str = EVAL_TASKS) -> dict:
    """`sam-eval` on the held-out tiles (kept when done): box, centre point, 1..5 clicks."""
    if not (folder / "eval.json").exists():
        run_tool(
            tool("sam-eval"),
            str(ckpt),
            "data=shards_sam",
            f"data.path={shards / 'val'}",
            f"data.val_path={shards / 'val'}",
            "data.num_workers=0",
            tasks,
            f"eval.val_max_clicks={CLICKS}",
            f"eval.out_dir={folder}",
            "seed=0",
        )
    return json.loads((folder / "eval.json").read_text())["figures"]


def pretrain(route: str, root: Path, out: Path, shards: Path, steps: int, seed: int) -> Path:
    """Stage 1 of a route (b-e): `steps` optimiser steps of PRETRAIN_BATCH images; the
    checkpoint stage 2 starts from."""
    from lite_medsam_helpers import lite_medsam_path

    teacher = lite_medsam_path()
    common = [
        f"trainer.max_epochs={steps // STEPS_PER_EPOCH}",
        "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, steps // 10)}",
        f"data.batch_size={PRETRAIN_BATCH}",
        "data.num_workers=0",
        "logger=csv",
        f"seed={seed}",
    ]
    folder = root / f"pretrain_{route}"
    if route in ("b", "c"):
        stage = ["stage=mae"] if route == "b" else ["stage=sami", f"model.teacher={teacher}"]
        run_train(
            [
                *stage,
                *STUDENT_MAE,
                "data=images",
                f"data.root={out / 'unlabelled'}",
                "data.val_fraction=0",
                *common,
            ],
            folder,
            root / "runs.log",
        )
    else:  # d-g: distillation
        half = steps // 2
        run_train(
            [
                "stage=distill",
                f"model.teacher={teacher}",
                *STUDENT_SAM,
                "data=shards_sam",
                f"data.path={shards / 'train_teacher'}",
                f"data.val_path={shards / 'val'}",
                "data.samples_per_epoch=12",
                "validate_before_training=false",
                "trainer.limit_val_batches=0",
                "stage.module.max_masks_per_image=6",
                *BOX_ONLY,
                *common,
                *([f"stage.module.decoder_phase_start={half}"] if route in "eg" else []),
                *(["model.teacher_output_norm=true"] if route in "fg" else []),
            ],
            folder,
            root / "runs.log",
        )
    return folder / "checkpoints" / "last.ckpt"


# Stage 2's two recipes. "scratch": the image encoder frozen (what a route did not provide,
# such as a stage-1 encoder's new neck, trains), prompt encoder and decoder trained from the
# route's checkpoint (LiteMedSAM's for d-g, random for a-c). "teacher-decoder": every route
# starts its prompt encoder and decoder from LiteMedSAM's (model.decoder_from; routes e and g
# keep the decoder their decoder phase trained), and every route trains the same tensors: neck,
# upsampling, prompt encoder and decoder, with patch embedding, positions and blocks frozen.
ENCODER_BODY = (
    "model.freeze=[image_encoder.patch_embed,image_encoder.pos_embed,image_encoder.blocks]"
)
RECIPES = {"scratch": "", "teacher-decoder": "td_"}


def stage2(
    init: Path | None,
    folder: Path,
    shards: Path,
    epochs: int,
    seed: int,
    recipe: str = "scratch",
    route: str = "a",
) -> Path:
    """The same stage 2 for every route (a recipe of RECIPES), exact boxes, released_sam's lr."""
    from lite_medsam_helpers import lite_medsam_path

    if recipe == "scratch":
        parts = ["model.freeze=[image_encoder]"]
    else:
        trained_decoder = route in "eg"
        parts = [
            ENCODER_BODY,
            *([] if trained_decoder else [f"model.decoder_from={lite_medsam_path()}"]),
        ]
    run_train(
        [
            "stage=sam",
            *STUDENT_SAM,
            *([f"model.init_from={init}"] if init else []),
            *parts,
            *tile_recipe(shards, epochs, 3e-4, seed),
            "trainer.limit_val_batches=0",  # sam-eval scores the export afterwards
            "validate_before_training=false",
            "stage.module.val_max_clicks=3",
        ],
        folder,
        folder.parent / "runs.log",
    )
    return folder / "export" / "sam.safetensors"


def held_out_batch(shards: Path):
    """The 4 held-out tiles at 256 px, ImageNet-normalised as distillation feeds them:
    [4, 3, 256, 256]."""
    import torch

    from sam_train.models.pixels import normalise_pixels

    img = np.asarray(Image.open(shards.parent / "raw" / "val" / "images" / "nuclei_br.png"))
    tiles = [
        img[y : y + TILE, x : x + TILE] for y in range(0, 256, TILE) for x in range(0, 256, TILE)
    ]
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float()  # [4, 3, 128, 128]
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear")
    return normalise_pixels(x, "imagenet")


def embedding_mse(ckpt: Path | None, shards: Path) -> float:
    """Held-out mean squared error of a student's embeddings against LiteMedSAM's; with no
    checkpoint, that of the teacher's own per-channel mean (what a student that learned only
    the average embedding would reach)."""
    import torch
    from lite_medsam_helpers import lite_medsam_path

    from sam_train.models.teacher import load_teacher
    from sam_train.weights.sam_loading import load_sam

    x, teacher = held_out_batch(shards), load_teacher(str(lite_medsam_path()))
    with torch.no_grad():
        target = teacher.embeddings(x)  # [4, 256, 64, 64]
        if ckpt is None:
            pred = target.mean(dim=(0, 2, 3), keepdim=True)
        else:
            pred = load_sam(ckpt).embed_images(x)
        return float(((pred - target) ** 2).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("outputs/student_routes"))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=24, help="a multiple of 6")
    p.add_argument("--stage2-epochs", type=int, default=4, help="6 steps of 2 tiles each")
    p.add_argument("--routes", nargs="*", default=list("abcde"))
    p.add_argument(
        "--stage2",
        choices=sorted(RECIPES),
        default="scratch",
        help="stage 2's recipe: decoder from each route's checkpoint, or LiteMedSAM's for all",
    )
    p.add_argument("--only-pretrain", action="store_true")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="no training: the table from the evaluations already in --out",
    )
    p.add_argument(
        "--no-stage2",
        action="store_true",
        help="stop after the distilled students' evaluation before stage 2 (a budget probe)",
    )
    a = p.parse_args(argv)
    from lite_medsam_helpers import lite_medsam_path

    out = a.out
    shards = prepare(out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["budget"] = {
        "pretrain_steps": a.pretrain_steps,
        "pretrain_batch": PRETRAIN_BATCH,
        "stage2_steps": a.stage2_epochs * 6,
    }
    tag = RECIPES[a.stage2]
    runs_key = f"runs_{a.stage2}" if tag else "runs"
    results.update(baselines(shards))  # the filled box, Otsu + the component under the click
    results["LiteMedSAM"] = evaluate(lite_medsam_path(), shards, out / "eval_lite_medsam")
    if "teacher_channel_mean_mse" not in results:
        results["teacher_channel_mean_mse"] = embedding_mse(None, shards)
    runs = results.setdefault(runs_key, {})
    if a.table_only:
        results[runs_key] = collect(out, a.seeds, a.routes, shards, tag)
        results_path.write_text(json.dumps(results, indent=2))
        print_table(results, runs_key)
        return
    for seed in a.seeds:
        root = out / f"seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        for route in a.routes:
            t0 = time.time()
            init = None
            if route != "a":
                init = pretrain(route, root, out, shards, a.pretrain_steps, seed)
            if a.only_pretrain:
                continue
            row: dict = {"seed": seed}
            if route in "defg":
                export = init.parent.parent / "export" / "sam.safetensors"
                row["before_stage2"] = evaluate(
                    export, shards, root / f"eval_{route}_before", "eval.tasks=[point,box]"
                )
                row["embedding_mse"] = embedding_mse(export, shards)
            if tag and route in "abc":  # the pairing as stage 2 starts it, before any step
                start = stage2(
                    init, root / f"stage2_{tag}0_{route}", shards, 0, seed, a.stage2, route
                )
                row["before_stage2"] = evaluate(
                    start, shards, root / f"eval_{tag}0_{route}", "eval.tasks=[point,box]"
                )
            if not a.no_stage2:
                folder = root / f"stage2_{tag}{route}"
                sam = stage2(init, folder, shards, a.stage2_epochs, seed, a.stage2, route)
                row["after"] = evaluate(sam, shards, root / f"eval_{tag}{route}")
            row["seconds"] = round(time.time() - t0)
            rows = [r for r in runs.get(route, []) if r["seed"] != seed]
            runs[route] = sorted([*rows, row], key=lambda r: r["seed"])
            results_path.write_text(json.dumps(results, indent=2))
            print(f"seed {seed} route {route}: {json.dumps(row)}", flush=True)
    results_path.write_text(json.dumps(results, indent=2))
    print_table(results, runs_key)


def collect(out: Path, seeds: list[int], routes: list[str], shards: Path, tag: str = "") -> dict:
    """Rows from the finished evaluations in `out` (a run cut short is left out)."""
    runs: dict = {}
    for route in routes:
        for seed in seeds:
            root = out / f"seed{seed}"
            after = root / f"eval_{tag}{route}" / "eval.json"
            if not after.exists():
                continue
            row: dict = {"seed": seed, "after": json.loads(after.read_text())["figures"]}
            before = root / f"eval_{route}_before" / "eval.json"
            if tag and route in "abc":
                before = root / f"eval_{tag}0_{route}" / "eval.json"
            if before.exists():
                row["before_stage2"] = json.loads(before.read_text())["figures"]
                if route in "defg":
                    export = root / f"pretrain_{route}" / "export" / "sam.safetensors"
                    row["embedding_mse"] = embedding_mse(export, shards)
            runs.setdefault(route, []).append(row)
    return runs


KEYS = ["miou_box", "miou_point_confident", *(f"miou_click_{k}" for k in range(1, CLICKS + 1))]


def print_table(results: dict, runs_key: str = "runs") -> None:
    names = {
        "a": "(a) random init",
        "b": "(b) MAE",
        "c": "(c) SAMI from LiteMedSAM",
        "d": "(d) distillation",
        "e": "(e) distillation + decoder phase",
        "f": "(f) distillation from the teacher's output norm",
        "g": "(g) (f) + decoder phase",
    }
    if "teacher_channel_mean_mse" in results:
        mse = results["teacher_channel_mean_mse"]
        print(f"held-out embedding MSE of the teacher's channel means: {mse:.3f}")
    print("| model | seeds | box | centre point | clicks 1..5 |")
    print("|---|---|---|---|---|")
    for name in ("filled box", "LiteMedSAM"):
        f = results[name]
        clicks = " / ".join(f"{f[k]:.3f}" for k in KEYS[2:] if k in f) or "-"
        point = f"{f['miou_point_confident']:.3f}" if "miou_point_confident" in f else "-"
        print(f"| {name} | - | {f['miou_box']:.3f} | {point} | {clicks} |")
    for route, rows in results.get(runs_key, {}).items():
        for part, label in (("before_stage2", " before stage 2"), ("after", "")):
            if any(part not in r for r in rows):
                continue
            figs = [r[part] for r in rows]
            clicks = " / ".join(cell([f.get(k) for f in figs]).split(" ")[0] for k in KEYS[2:])
            print(
                f"| {names[route]}{label} | {len(rows)} | {cell([f.get('miou_box') for f in figs])}"
                f" | {cell([f.get('miou_point_confident') for f in figs])} | {clicks} |"
            )
        if all("embedding_mse" in r for r in rows):
            print(
                f"  {names[route]}: held-out embedding MSE {cell([r['embedding_mse'] for r in rows])}"
            )


if __name__ == "__main__":
    main()
