"""The demo's stage 2 with the encoder's blocks frozen and their output cached: a recipe probe.

With a frozen trunk, each training image's trunk features (both flips, as the loader draws
them) can be computed once; the neck, prompt encoder and mask decoder then train on them with
the production prompt simulation and losses (`interactive_loss`) and are scored like
validation (`evaluate_prompts`: one centre point, one box, the click curve). A step costs the
decoder alone (~0.35 s on one core at the demo's 8 masks x 5 rounds), so a learning rate or a
loss weight can be compared in minutes. This is how `experiment=demo_sam`'s recipe was chosen
(README.md, "What to expect"). An experiment, not a test: it asserts nothing.

    python benchmarks/demo_decoder_probe.py --init-from outputs/demo/mae/checkpoints/last.ckpt
    python benchmarks/demo_decoder_probe.py --init-from ... --lr 4e-3        # the old demo lr
    python benchmarks/demo_decoder_probe.py --random-encoder                 # no stage 1

Differences from `sam-train`: the relative-position tables (when the model has them) stay at
their zero init, and the seed streams and data order are this script's own; the optimiser
(AdamW, no weight decay), warm-up + cosine schedule and gradient clipping at 1.0 are the demo's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from sam_train.errors import run_tool
from sam_train.metrics import evaluate_prompts, mask_iou
from sam_train.training.interactive import InteractiveConfig, interactive_loss
from sam_train.training.prompts import select_masks

MIN_AREA, MAX_FRACTION, VAL_MASKS, VAL_CLICKS = 400, 0.9, 16, 5  # experiment=demo_sam's


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-from", help="stage-1 checkpoint (the demo's mae/checkpoints/last.ckpt)")
    p.add_argument("--random-encoder", action="store_true", help="no stage 1: a random trunk")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--constant", action="store_true", help="constant lr after the warm-up")
    p.add_argument("--focal", type=float, default=2.0, help="focal weight (dice 1)")
    p.add_argument("--masks", type=int, default=8, help="masks per image per step")
    p.add_argument("--clicks", type=int, default=3, help="corrective-click rounds")
    p.add_argument("--mask-only", type=int, default=1, help="mask-only rounds")
    p.add_argument("--box-max-noise", type=float, default=20.0, help="box jitter cap, pixels")
    p.add_argument("--epochs-cached", type=int, default=4, help="passes over the loader to cache")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the validation history here (JSON)")
    args = p.parse_args()
    if not (args.init_from or args.random_encoder):
        p.error("give --init-from <stage-1 checkpoint> or --random-encoder")
    return args


def build(args: argparse.Namespace):
    overrides = ["stage=sam", "experiment=demo_sam", f"seed={args.seed}"]
    if args.random_encoder:
        overrides += ["model.freeze_encoder=false"]
    else:
        overrides += [f"model.init_from={args.init_from}"]
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model)
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    return model, data


@torch.no_grad()
def cached(encoder, loader, passes: int = 1) -> list:
    return [(b, encoder.forward_grid(b.images)) for _ in range(passes) for b in loader]


def validation_targets(val: list) -> list:
    """(masks to score, trunk features) per validation batch, drawn as validation draws them."""
    out = []
    for i, (batch, trunk) in enumerate(val):
        gen = torch.Generator().manual_seed(i)
        targets = select_masks(batch, VAL_MASKS, MAX_FRACTION, MIN_AREA, gen)
        if targets.num_masks:
            out.append((targets, trunk))
    return out


def box_fill_iou(val: list) -> float:
    """A reference: the mean IoU of each validation mask's bounding box, filled, as the mask."""
    ious = []
    for t, _ in val:
        size = t.masks.shape[-1]
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        for mask, (x0, y0, x1, y1) in zip(t.masks.bool(), t.boxes.tolist()):
            fill = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            ious.append(mask_iou(fill[None], mask[None]))
    return round(torch.cat(ious).mean().item(), 3)


@torch.no_grad()
def score(model, val: list) -> dict[str, float | list[float]]:
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"point": [], "box": [], "clicks": []}
    for t, trunk in val:
        r = evaluate_prompts(
            model,
            model.image_encoder.neck(trunk),
            t.masks,
            t.image_index,
            boxes=t.boxes,
            image_hw=t.image_hw,
            max_clicks=VAL_CLICKS,
        )
        parts["point"].append(r["iou_point_confident"])
        parts["box"].append(r["iou_box"])
        parts["clicks"].append(r["iou_clicks"])
    model.train()
    return {
        "point": round(torch.cat(parts["point"]).mean().item(), 3),
        "box": round(torch.cat(parts["box"]).mean().item(), 3),
        "clicks": [round(v, 2) for v in torch.cat(parts["clicks"]).mean(0).tolist()],
    }


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    # a missing or foreign checkpoint (wrapped by Hydra's instantiate) is one line, exit 2
    model, data = run_tool("demo_decoder_probe", build, args)
    t0 = time.perf_counter()
    train = cached(model.image_encoder, data.train_dataloader(), args.epochs_cached)
    val = validation_targets(cached(model.image_encoder, data.val_dataloader()))
    print(f"cached {len(train)} training batches in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"reference: each validation mask's box, filled, scores mIoU {box_fill_iou(val)}")

    cfg = InteractiveConfig(
        num_click_rounds=args.clicks,
        num_mask_only_rounds=args.mask_only,
        loss_weights={"loss_focal": args.focal},
        box_max_noise=args.box_max_noise,
        checkpoint_rounds=False,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    params = [
        *model.image_encoder.neck.parameters(),
        *model.prompt_encoder.parameters(),
        *model.mask_decoder.parameters(),
    ]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        if args.constant:
            return 1.0
        return 0.5 * (
            1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup))
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(args.seed)
    history = [(0, score(model, val))]
    print("step 0", history[-1][1], flush=True)
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch, trunk = train[step % len(train)]
        targets = select_masks(batch, args.masks, MAX_FRACTION, MIN_AREA, gen)
        result = interactive_loss(model, model.image_encoder.neck(trunk), targets, cfg, gen)
        opt.zero_grad()
        result.losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            history.append((step + 1, score(model, val)))
            secs = time.perf_counter() - t0
            print(f"step {step + 1} ({secs:.0f} s)", history[-1][1], flush=True)
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "history": history})
        )


if __name__ == "__main__":
    main()
