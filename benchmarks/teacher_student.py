"""Does a teacher help a small student? Four routes to a stage-2 encoder, one stage-2 budget.

    python benchmarks/teacher_student.py [--out outputs/teacher_student] [--seeds 0,1]
                                         [--scale 1.0] [--teacher CKPT]

1. a teacher: a small SAM (width 128, depth 6, 128 px) made here as `make demo` makes its
   SAM: MAE on the sample photos (the demo_mae recipe), then the demo's stage-2 recipe
   (frozen encoder) on the sample masks for 2x the students' stage-2 steps (skipped with
   --teacher CKPT). (With the encoder trainable from random init, 540 steps left the teacher
   predicting all-background masks: one-point mIoU 0.03.);
2. a student half as wide and deep (width 64, depth 4, the same 8 x 8 embedding grid) by four
   routes with the same number of stage-1 steps and images per step:
   (a) random init; (b) MAE on the sample photos; (c) SAMI from the teacher on the same
   photos; (d) distillation of the teacher's embeddings on the stage-2 training images,
   without and with the decoder phase (the second half of its steps);
3. each student then gets the same stage-2 run (the demo recipe: frozen encoder, 8 masks x 3
   rounds, focal : dice 2 : 1), and the held-out one-point (most confident of 3) and box mIoU
   of its last validation are reported, with the teacher's and, for (d), the distilled
   student's before stage 2 (its decoder is the teacher's).

Every figure comes from a `sam-train` run; the table (mean and range over seeds) and each run's
numbers are written to <out>/results.json and printed. `--scale` multiplies every step budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SAM_BIN = str(Path(sys.executable).parent / "sam-train")
SIZE = 128  # px; 16 px patches -> an 8 x 8 embedding grid for teacher and students
TEACHER = [
    "model.encoder_embed_dim=128",
    "model.encoder_depth=6",
    "model.encoder_num_heads=4",
    "model.encoder_global_attn_indexes=[2,5]",
]
TEACHER_MAE = [
    "model.embed_dim=128",
    "model.depth=6",
    "model.num_heads=4",
]
STUDENT_SAM = [
    "model.encoder_embed_dim=64",
    "model.encoder_depth=4",
    "model.encoder_num_heads=2",
    "model.encoder_global_attn_indexes=[1,3]",
]
STUDENT_MAE = [
    "model.embed_dim=64",
    "model.depth=4",
    "model.num_heads=2",
    "model.decoder_embed_dim=64",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
COMMON = ["callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=5"]
STAGE2 = [
    "stage=sam",
    "experiment=demo_sam",
    f"model.image_size={SIZE}",
    "model.window_size=4",
    "stage.module.min_mask_area=100",  # the demo's 400 px at 256 px, at 128 px
    "data.samples_per_epoch=60",  # 30 steps of 2 images
]


def run(args: list[str], folder: Path, log: Path) -> dict[str, float]:
    """`sam-train ARGS hydra.run.dir=FOLDER`; the last value of every metric in its csv."""
    if not (folder / "checkpoints" / "last.ckpt").exists() or not (folder / "done").exists():
        t0 = time.time()
        with open(log, "a") as f:
            f.write(f"\n$ sam-train {' '.join(args)}\n")
            f.flush()
            res = subprocess.run(
                [SAM_BIN, *args, *COMMON, f"hydra.run.dir={folder}"],
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
        if res.returncode != 0:
            raise SystemExit(f"run failed ({res.returncode}): {folder}; see {log}")
        (folder / "done").write_text(f"{time.time() - t0:.0f} s\n")
        print(f"  {folder.name}: {time.time() - t0:.0f} s", flush=True)
    return last_metrics(folder / "csv" / "metrics.csv")


def last_metrics(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def first_metrics(path: Path) -> dict[str, float]:
    """The first logged value of every metric (the validation before training)."""
    out: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None) and k not in out:
                    out[k] = float(v)
    return out


def stage1_steps(scale: float) -> tuple[int, int]:
    """(epochs, images per epoch) of every stage-1 route: batch 16, 15 steps an epoch."""
    return max(1, round(4 * scale)), 240


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("outputs/teacher_student"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step budget")
    p.add_argument("--teacher", type=Path, help="a SAM checkpoint at 128 px / 16 (skips step 1)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "runs.log"
    s2_epochs = max(1, round(6 * a.scale))
    results: dict = {"stage2_steps": s2_epochs * 30, "runs": {}}

    teacher = a.teacher
    if teacher is None:
        print("teacher", flush=True)
        run(
            ["experiment=demo_mae", *TEACHER_MAE, f"model.img_size={SIZE}"],
            a.out / "teacher_mae",
            log,
        )
        folder = a.out / "teacher"
        m = run(
            [
                *STAGE2,
                *TEACHER,
                f"model.init_from={a.out / 'teacher_mae' / 'checkpoints' / 'last.ckpt'}",
                f"trainer.max_epochs={2 * s2_epochs}",
                f"trainer.check_val_every_n_epoch={2 * s2_epochs}",
            ],
            folder,
            log,
        )
        results["teacher"] = {k: m.get(f"val/{k}") for k in ("miou_point_confident", "miou_box")}
        teacher = folder / "checkpoints" / "last.ckpt"
    epochs, images = stage1_steps(a.scale)
    stage1_common = [
        f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={epochs}",
        "optim.lr=1e-3",  # absolute, every route (base_lr scaling at batch 16 would be tiny)
        "optim.warmup_steps=10",
    ]
    half = epochs * images // 16 // 2

    for seed in [int(s) for s in a.seeds.split(",")]:
        print(f"seed {seed}", flush=True)
        root = a.out / f"seed{seed}"
        root.mkdir(exist_ok=True)
        s = [f"seed={seed}"]
        inits: dict[str, Path | None] = {"a_random": None}
        mae_like = [
            f"model.img_size={SIZE}",
            "data.batch_size=16",
            f"data.samples_per_epoch={images}",
        ]
        run(["stage=mae", *STUDENT_MAE, *mae_like, *stage1_common, *s], root / "b_mae", log)
        inits["b_mae"] = root / "b_mae" / "checkpoints" / "last.ckpt"
        run(
            ["stage=sami", f"model.teacher={teacher}", *STUDENT_MAE, *mae_like, *stage1_common, *s],
            root / "c_sami",
            log,
        )
        inits["c_sami"] = root / "c_sami" / "checkpoints" / "last.ckpt"
        distill = [
            "stage=distill",
            "experiment=demo_sam",
            f"model.teacher={teacher}",
            *STUDENT_SAM,
            f"model.image_size={SIZE}",
            "model.window_size=4",
            "stage.module.min_mask_area=100",
            "data.batch_size=16",
            f"data.samples_per_epoch={images}",
            *stage1_common,
            "validate_before_training=false",
            *s,
        ]
        run(distill, root / "d_distill", log)
        inits["d_distill"] = root / "d_distill" / "checkpoints" / "last.ckpt"
        run([*distill, f"stage.module.decoder_phase_start={half}"], root / "d_distill_decoder", log)
        inits["d_distill_decoder"] = root / "d_distill_decoder" / "checkpoints" / "last.ckpt"
        for route, init in inits.items():
            folder = root / f"stage2_{route}"
            args = [
                *STAGE2,
                *STUDENT_SAM,
                f"trainer.max_epochs={s2_epochs}",
                f"trainer.check_val_every_n_epoch={s2_epochs}",
                *s,
            ]
            if init is not None:
                args.append(f"model.init_from={init}")
            m = run(args, folder, log)
            before = first_metrics(folder / "csv" / "metrics.csv")
            results["runs"].setdefault(route, []).append(
                {
                    "seed": seed,
                    "point": m.get("val/miou_point_confident"),
                    "box": m.get("val/miou_box"),
                    "point_before_stage2": before.get("val/miou_point_confident"),
                    "box_before_stage2": before.get("val/miou_box"),
                }
            )
        (a.out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))


def cell(xs: list[float | None]) -> str:
    """The mean of the values given (None: not measured) and, over several, their range."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    mean = sum(xs) / len(xs)
    return f"{mean:.3f}" + (f" ({min(xs):.3f}-{max(xs):.3f})" if len(xs) > 1 else "")


def print_table(results: dict) -> None:
    if "teacher" in results:
        t = results["teacher"]
        print(f"teacher: point {t['miou_point_confident']}, box {t['miou_box']}")
    print("| route | runs | one-point mIoU | box mIoU | before stage 2 (point / box) |")
    print("|---|---|---|---|---|")
    for route, rows in results["runs"].items():
        print(
            f"| {route} | {len(rows)} | {cell([r['point'] for r in rows])} | "
            f"{cell([r['box'] for r in rows])} | {cell([r['point_before_stage2'] for r in rows])}"
            f" / {cell([r['box_before_stage2'] for r in rows])} |"
        )


if __name__ == "__main__":
    main()
