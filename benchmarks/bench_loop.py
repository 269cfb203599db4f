"""The whole `sam-train stage=mae` loop against the bare model step, and the readers against
what the models consume.

    python benchmarks/bench_loop.py [--steps 24] [--json out.json]

1. Framework overhead. The real run: the `train.yaml` config composed with
   `hydra.compose` (stage=mae: tiny MAE at 224, sample photos, batch 16, CSV logger, every
   default callback: checkpoints, LR monitor, progress bar, throughput, reconstructions,
   export) through `sam_train.cli.train.train(cfg)`, one epoch of `--steps` batches. A timing
   callback records the start of every training batch; the loop's steady rate is batch size /
   median interval (data fetch + step + logging + callbacks). The whole-run rate (start-up,
   sanity check, validation, checkpoints, export included) is shown next to it. The bare step:
   the same model and optimiser (`param_groups` + `build_optimizer`, as `MaeModule`), masking
   noise from a seeded generator as the module draws it, one prepared batch in memory; timed
   before and after the loop (half each, so drift shows) and reported as the median.
2. Readers. Stage 1: the sample-photo datamodule and image shards (MAE crops at 224), 0 and 2
   DataLoader workers. Stage 2: SAM shards (1024 px, up to 64 masks from RLE) with 2 workers.
   Each against the images/s the model consumes at the tiny size: the bare MAE step above, and
   for stage 2 one tiny-SAM step (image encoder forward + backward, box prompts for 16 masks,
   one decoder round); the real stage-2 step runs several interactive rounds, so it consumes
   less and this ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("WANDB_MODE", "offline")

import torch

from benchmarks.common import THREADS_HELP, BatchTimer, machine, median, spread


def compose_mae(run_dir: Path, steps: int, extra: list[str] = ()):
    from hydra import compose, initialize_config_module

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=["stage=mae", f"paths.run_dir={run_dir}", *extra])
    batch = cfg.data.batch_size
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "stage=mae",
                f"paths.run_dir={run_dir}",
                "trainer.max_epochs=1",
                f"data.samples_per_epoch={steps * batch}",
                "callbacks.progress_bar.refresh_rate=1",
                "+callbacks.batch_timer._target_=benchmarks.common.BatchTimer",
                *extra,
            ],
        )


def bare_step(cfg):
    """The model step alone, as `MaeModule` runs it, on one batch kept in memory."""
    from hydra.utils import instantiate

    from sam_train.lit.optim import build_optimizer, derive_schedule, param_groups
    from sam_train.seeding import sample_seed

    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    optim_cfg = instantiate(cfg.optim)
    derived = derive_schedule(optim_cfg, cfg.data.batch_size, 1000, 100)
    groups = param_groups(model, optim_cfg.weight_decay, no_decay_names=model.no_weight_decay())
    opt, sched = build_optimizer(groups, optim_cfg, derived)
    b, s = cfg.data.batch_size, cfg.model.img_size
    images = torch.randn(b, 3, s, s)
    n_patches = (s // model.patch_size) ** 2
    state = {"step": 0}

    def step() -> None:
        gen = torch.Generator().manual_seed(sample_seed(0, state["step"], 0))
        noise = torch.rand(b, n_patches, generator=gen)
        loss, _, _ = model(images, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        state["step"] += 1

    return step, b


def time_calls(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_overhead(steps: int, bare_reps: int, warmup: int, extra: list[str] = ()) -> dict:
    from sam_train.cli.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_mae(Path(tmp) / "run", steps, list(extra))
        step, batch = bare_step(cfg)
        time_calls(step, warmup)
        bare = time_calls(step, bare_reps // 2)
        BatchTimer.starts, BatchTimer.ends = [], []
        t0 = time.perf_counter()
        train(cfg)
        whole = time.perf_counter() - t0
        bare += time_calls(step, bare_reps - bare_reps // 2)
    starts = BatchTimer.starts
    intervals = [b - a for a, b in zip(starts[:-1], starts[1:])][warmup:]
    loop_s = median(intervals)
    # inside the loop: batch start -> batch end (step + Lightning's step machinery) and the
    # rest of each interval (fetching the next batch, progress bar, logger, batch-end hooks)
    in_step = [e - b for b, e in zip(starts, BatchTimer.ends)][warmup:]
    bare_s = median(bare)
    return {
        "model": "mae_vit_tiny (conf/model/mae_vit_tiny.yaml)",
        "overrides": list(extra),
        "data_workers": cfg.data.num_workers,
        "img_size": cfg.model.img_size,
        "batch": batch,
        "steps": steps,
        "bare_s_per_step": bare_s,
        "bare_spread": spread(bare),
        "bare_before_after_s": [median(bare[: bare_reps // 2]), median(bare[bare_reps // 2 :])],
        "loop_s_per_step": loop_s,
        "loop_spread": spread(intervals),
        "bare_images_per_s": batch / bare_s,
        "loop_images_per_s": batch / loop_s,
        "loop_over_bare": bare_s / loop_s,
        "in_loop_step_s": median(in_step),
        "in_loop_between_steps_s": loop_s - median(in_step),
        "whole_run_s": whole,
        "whole_run_images_per_s": steps * batch / whole,
        "fit_s": BatchTimer.fit_span[-1] - BatchTimer.fit_span[0]
        if len(BatchTimer.fit_span) == 2
        else None,
    }


# ------------------------------------------------------------------------------------ readers
def sam_consumption(img_size: int, masks: int, reps: int) -> float:
    """Images/s of one tiny-SAM training step (1 image, `masks` box prompts, one decoder round)."""
    import torch.nn.functional as F

    from sam_train.models.sam import build_sam_vit

    torch.manual_seed(0)
    sam = build_sam_vit("tiny", image_size=img_size).train()
    opt = torch.optim.AdamW(sam.parameters(), lr=1e-4)
    images = torch.randn(1, 3, img_size, img_size)
    xy = torch.rand(masks, 2) * img_size * 0.6
    boxes = torch.cat([xy, xy + img_size * 0.3], dim=1)
    target = (torch.rand(masks, 1, img_size // 4, img_size // 4) > 0.5).float()

    def step() -> None:
        logits, iou = sam(images, boxes=boxes, multimask_output=False)
        loss = F.binary_cross_entropy_with_logits(logits, target) + iou.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    return 1.0 / median(time_calls(step, reps))


def bench_readers(n_images: int, sam_size: int) -> list[dict]:
    from benchmarks.bench_data import _rate, make_inputs
    from data_prep.coco import convert_coco
    from data_prep.images import convert_images
    from data_prep.shard_writer import ShardOptions
    from sam_train.data.mae_datamodule import sample_datamodule
    from sam_train.data.shard_datamodules import ShardMaeDataModule, ShardSamDataModule

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, coco = make_inputs(root / "in", n_images)
        opts = ShardOptions(maxcount=max(1, n_images // 8), workers=2, progress=False)
        convert_images(images, root / "images", opts)
        convert_coco(images, coco, root / "coco", opts)
        for workers in (0, 2):
            common = dict(
                num_workers=workers,
                pin_memory=False,
                shuffle_buffer=64,
                samples_per_epoch=10 * n_images,
            )
            sample = sample_datamodule(
                224, batch_size=16, samples_per_epoch=16 * 40, num_workers=workers
            )
            mae = ShardMaeDataModule(str(root / "images"), img_size=224, batch_size=16, **common)
            cases = [
                ("1", "sample photos, MAE crops 224", sample, 24),
                ("1", "image shards, MAE crops 224", mae, 24),
            ]
            if workers == 2:
                sam = ShardSamDataModule(
                    str(root / "coco"), img_size=sam_size, batch_size=2, max_masks=64, **common
                )
                cases.append(("2", f"SAM shards {sam_size}, <=64 masks", sam, 12))
            for stage, what, dm, nb in cases:
                rate = _rate(dm.train_dataloader(), nb, dm.batch_size)
                rows.append(
                    {"stage": stage, "reader": what, "workers": workers, "images_per_s": rate}
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=24, help="training batches in the real run")
    p.add_argument("--bare-reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reader-images", type=int, default=96)
    p.add_argument("--sam-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--skip-readers", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    variants = [[], ["data.num_workers=1"]]  # the default config; crops made in a worker
    overheads = []
    for extra in variants:
        ov = bench_overhead(a.steps, a.bare_reps, a.warmup, extra)
        overheads.append(ov)
    for ov in overheads:
        print(
            f"\n== stage-1 loop vs bare step: {ov['model']}, {ov['img_size']} px, batch "
            f"{ov['batch']}, {torch.get_num_threads()} thread(s), overrides {ov['overrides'] or 'none'} "
            f"(data workers {ov['data_workers']})"
        )
        print(
            f"bare step        {ov['bare_images_per_s']:7.2f} images/s  ({ov['bare_s_per_step']:.3f} s, "
            f"before/after the run {ov['bare_before_after_s'][0]:.3f}/{ov['bare_before_after_s'][1]:.3f} s)"
        )
        print(
            f"sam-train loop   {ov['loop_images_per_s']:7.2f} images/s  ({ov['loop_s_per_step']:.3f} s, "
            f"spread {ov['loop_spread']:.1%})  -> loop/bare = {ov['loop_over_bare']:.1%}"
        )
        print(
            f"  in the loop: step {ov['in_loop_step_s']:.3f} s (batch start -> end), between "
            f"steps {ov['in_loop_between_steps_s']:.3f} s (next batch, logging, hooks)"
        )
        print(
            f"whole run        {ov['whole_run_images_per_s']:7.2f} images/s  ({ov['whole_run_s']:.1f} s for "
            f"{ov['steps']} batches, start-up + validation + checkpoints + export included)"
        )
    ov = overheads[0]

    out = {"machine": machine(), "overhead": overheads}
    if not a.skip_readers:
        readers = bench_readers(a.reader_images, a.sam_size)
        sam_rate = sam_consumption(a.sam_size, masks=16, reps=2)
        consume = {"1": ov["bare_images_per_s"], "2": sam_rate}
        print(
            f"\n== readers vs model consumption (tiny models, {torch.get_num_threads()} thread(s) in "
            f"the main process): stage 1 {consume['1']:.2f} images/s, stage 2 {consume['2']:.2f} images/s"
        )
        print(f"{'stage':5} {'reader':34} {'workers':>7} {'images/s':>9} {'x consumption':>13}")
        for r in readers:
            r["x_consumption"] = r["images_per_s"] / consume[r["stage"]]
            print(
                f"{r['stage']:5} {r['reader']:34} {r['workers']:>7} {r['images_per_s']:9.1f} "
                f"{r['x_consumption']:12.1f}x"
            )
        out.update({"readers": readers, "consumption_images_per_s": consume})
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
