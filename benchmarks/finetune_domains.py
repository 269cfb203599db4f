"""Does fine-tuning a trained SAM on a second domain help, and which way: full fine-tuning,
a frozen image encoder, or LoRA? A CPU-sized experiment (about 10-20 minutes on 2 cores).

    python benchmarks/finetune_domains.py [--base-steps 600] [--steps 300] [--seeds 3]
        [--json out.json]

1. A base: a tiny SAM trained here with the stage-2 interactive loss on domain A ("shapes":
   flat-coloured disks, rectangles and triangles on colour noise), saved as a checkpoint.
2. Domain B ("textures"): grey striped backgrounds, objects are ellipses cut out of the same
   grey with stripes at another angle (a small brightness offset at most): nothing in colour
   separates them, the encoder must see texture.
3. From the base, each contender (built by `trainable_sam(init_from=base, ...)`, as
   `sam-train` builds it) trains the same number of steps on B with the same data order, lr and
   schedule: full fine-tuning; model.freeze=[image_encoder]; peft=lora (rank 4 on attn.qkv).
   The prompt encoder and mask decoder train in all three.
4. Held-out mIoU of one centre click (most confident of 3 masks) on fresh images of B (and of
   A, what is forgotten), before and after; every seed repeats step 3 with another data order
   and adapter init. The base is trained once.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from sam_train.data.batch import SamBatch
from sam_train.lit.sam_model import trainable_sam
from sam_train.metrics import evaluate_prompts
from sam_train.models.lora import LoraConfig, count_parameters
from sam_train.models.sam.sam import build_sam
from sam_train.training import InteractiveConfig, interactive_loss, select_masks

SIZE = 64
ARCH = dict(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    image_size=SIZE,
    patch_size=8,
    window_size=4,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
)
CONTENDERS = {
    "full": {},
    "frozen_encoder": {"freeze": ["image_encoder"]},
    "lora_r4_qkv": {"peft": LoraConfig(targets=["attn.qkv"], rank=4, alpha=4.0)},
}
LOOP = InteractiveConfig(num_click_rounds=1, num_mask_only_rounds=1, point_prob=0.75, box_prob=0.25)


# ------------------------------------------------------------------------------------ domains
def _grid():
    return torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")


def _shape_mask(kind: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = _grid()
    cx, cy = (torch.rand(2, generator=g) * (SIZE - 24) + 12).tolist()
    r = float(torch.rand(1, generator=g) * 8 + 6)
    if kind == 0:  # disk
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    if kind == 1:  # rectangle
        h = float(torch.rand(1, generator=g) * 8 + 5)
        return ((xx - cx).abs() < r) & ((yy - cy).abs() < h)
    return (yy - cy + r > 0) & (yy - cy < r) & ((xx - cx).abs() < (yy - cy + r) / 2)  # triangle


def _ellipse(g: torch.Generator) -> torch.Tensor:
    yy, xx = _grid()
    cx, cy = (torch.rand(2, generator=g) * (SIZE - 24) + 12).tolist()
    a, b = (torch.rand(2, generator=g) * 7 + 6).tolist()
    t = float(torch.rand(1, generator=g) * math.pi)
    u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
    v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 < 1


def _stripes(angle: float, period: float, phase: float) -> torch.Tensor:
    yy, xx = _grid()
    return torch.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)


def shapes_image(g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    image = torch.randn(3, SIZE, SIZE, generator=g) * 0.3
    masks = []
    for i in range(3):
        m = _shape_mask(i, g)
        colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
        image = torch.where(m, colour + 0.1 * image, image)
        masks = [old & ~m for old in masks] + [m]  # later shapes cover earlier ones
    return image, masks


def textures_image(g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    angle = float(torch.rand(1, generator=g) * math.pi)
    image = 0.6 * _stripes(angle, 5.0, float(torch.rand(1, generator=g) * 6.3))
    masks = []
    for _ in range(3):
        m = _ellipse(g)
        inside = (
            0.6 * _stripes(angle + math.pi / 2, 5.0, 0.0) + float(torch.randn(1, generator=g)) * 0.1
        )
        image = torch.where(m, inside, image)
        masks = [old & ~m for old in masks] + [m]
    image = image + torch.randn(SIZE, SIZE, generator=g) * 0.15
    return image.expand(3, SIZE, SIZE).clone(), masks


DOMAINS = {"shapes": shapes_image, "textures": textures_image}


def make_batch(domain: str, num_images: int, g: torch.Generator) -> SamBatch:
    images, all_masks = [], []
    for _ in range(num_images):
        image, masks = DOMAINS[domain](g)
        images.append(image)
        all_masks.append(torch.stack(masks))
    masks = torch.stack(all_masks)  # [B, M, S, S]
    boxes = torch.zeros(*masks.shape[:2], 4)
    valid = masks.flatten(2).sum(-1) >= 16  # [B, M]
    for b in range(masks.shape[0]):
        for i in range(masks.shape[1]):
            if valid[b, i]:
                ys, xs = masks[b, i].nonzero(as_tuple=True)
                boxes[b, i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    return SamBatch(torch.stack(images), masks, valid, boxes, torch.full(masks.shape[:2], -1))


# ------------------------------------------------------------------------------------ training
def train(sam, domain: str, steps: int, lr: float, seed: int, batch: int = 4) -> None:
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(steps // 15, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    data, prompts = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    sam.train()
    for _ in range(steps):
        b = make_batch(domain, batch, data)
        targets = select_masks(b, min_area=16, generator=prompts)
        result = interactive_loss(sam, sam.embed_images(b.images), targets, LOOP, prompts)
        opt.zero_grad(set_to_none=True)
        result.losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()


@torch.no_grad()
def miou(sam, held_out: SamBatch) -> float:
    sam.eval()
    targets = select_masks(held_out, min_area=16)
    out = evaluate_prompts(
        sam, sam.embed_images(held_out.images), targets.masks, targets.image_index, max_clicks=1
    )
    return out["iou_point_confident"].float().mean().item()


def summary(xs: list[float]) -> dict:
    return {
        "mean": statistics.mean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "runs": xs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps, every contender")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr, every contender")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=48, help="held-out images per domain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    held = {d: make_batch(d, args.held_out, torch.Generator().manual_seed(10_000)) for d in DOMAINS}

    torch.manual_seed(0)
    base = build_sam(**ARCH)
    train(base, "shapes", args.base_steps, 4e-3, seed=0)
    before = {d: miou(base, held[d]) for d in DOMAINS}
    print(f"base after {args.base_steps} steps on shapes: held-out mIoU {before}", flush=True)
    result: dict = {"args": vars(args) | {"json": str(args.json)}, "base": before, "runs": {}}
    after = {name: {d: [] for d in DOMAINS} for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "base_shapes.pt"
        torch.save(base.state_dict(), ckpt)
        for seed in range(args.seeds):  # contenders alternate: a cut-short run stays balanced
            for name, options in CONTENDERS.items():
                torch.manual_seed(100 + seed)  # adapter init
                sam = trainable_sam(init_from=str(ckpt), **ARCH, **options)
                trainable, total = count_parameters(sam)
                train(sam, "textures", args.steps, args.lr, seed=100 + seed)
                scores = {d: miou(sam, held[d]) for d in DOMAINS}
                for d, v in scores.items():
                    after[name][d].append(v)
                print(f"{name} seed {seed}: held-out mIoU {scores}", flush=True)
                result["runs"][name] = {
                    "trainable": trainable,
                    "total": total,
                    **{f"after_{d}": summary(v) for d, v in after[name].items()},
                }
    result["seconds"] = time.perf_counter() - t0
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def print_table(result: dict) -> None:
    base = result["base"]
    n = result["args"]["seeds"]
    print(
        f"\n| from the shapes base, {result['args']['steps']} steps on textures | trainable "
        f"| textures mIoU (before {base['textures']:.3f}) | shapes mIoU (before {base['shapes']:.3f}) |"
    )
    print("|---|---|---|---|")
    for name, r in result["runs"].items():
        cells = [
            f"{s['mean']:.3f} ± {s['sd']:.3f} ({s['min']:.3f}-{s['max']:.3f}, {n} runs)"
            for s in (r["after_textures"], r["after_shapes"])
        ]
        share = 100 * r["trainable"] / r["total"]
        print(f"| {name} | {r['trainable']:,} ({share:.1f}%) | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
