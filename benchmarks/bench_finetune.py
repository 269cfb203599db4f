"""Fine-tuning a SAM three ways, side by side: full fine-tuning, frozen image encoder, LoRA.

    python benchmarks/bench_finetune.py [--size 1024] [--masks 8] [--rounds 3] [--reps 2]
        [--contenders full,frozen,lora,lora_ckpt] [--json out.json]

One step (as `bench_sam.make_step`): image encoder forward once, R rounds for K masks
(checkpointed, as stage=sam runs them), SAM's losses, backward, AdamW over the trainable
parameters only; sam_vit_b, batch 1, fp32, CPU, one thread. The three share one set of base
weights (`shared_contenders`). Contenders (built by `trainable_sam`, the code `sam-train` runs):
  full    every parameter trains
  frozen  model.freeze=[image_encoder]: the encoder runs without a graph
  lora    peft=lora, rank 4 on attn.qkv: the encoder's base weights frozen, its adapters train
  lora_ckpt, full_ckpt   the same with activation_checkpointing=true: each encoder block's
          activations recomputed in the backward instead of held from the forward
  lora_ckpt2   LoRA with activation_checkpointing=2: every second block recomputed
The prompt encoder and the mask decoder train in all three (as `peft=lora` does by default).
Reported per contender: trainable parameters, peak step bytes (torch's CPU allocator above
the step's start: activations, gradients, temporaries; `common.peak_cpu_bytes`), resident
training state (fp32 weights + AdamW's two moments of the trainable ones), and the median
step time of interleaved repetitions. Then the same arithmetic for sam_vit_h against a 24 GB GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.checkpoint import checkpoint

from benchmarks.bench_sam import decode_ours
from benchmarks.common import (
    THREADS_HELP,
    fmt_si,
    interleaved,
    load_average,
    machine,
    median,
    peak_cpu_bytes,
    quiet_profiler_logs,
    spread,
)
from sam_train.lit.sam_model import trainable_sam
from sam_train.losses import masks_to_logit_size, sam_loss
from sam_train.models.lora import LoraConfig, add_lora, count_parameters
from sam_train.models.sam.sam import SAM_SIZES
from sam_train.training.freezing import freeze_parts

LORA = LoraConfig(targets=["attn.qkv"], rank=4, alpha=4.0)
CONTENDERS = {
    "full": {},
    "frozen": {"freeze": ["image_encoder"]},
    "lora": {"peft": LORA},
    "lora_ckpt": {"peft": LORA, "checkpointing": True},
    "lora_ckpt2": {"peft": LORA, "checkpointing": 2},
    "full_ckpt": {"checkpointing": True},
}
DEFAULT_CONTENDERS = "full,frozen,lora,lora_ckpt"
FP32 = 4


def build(model: str, size: int, freeze=(), checkpointing: bool | int = False, **options):
    """`trainable_sam`; `freeze` applied as asked (no `init_from` here, which would otherwise
    keep every tensor trainable); `checkpointing` as `activation_checkpointing=true` sets it."""
    torch.manual_seed(0)
    sam = trainable_sam(**asdict(SAM_SIZES[model]), image_size=size, **options)
    freeze_parts(sam, freeze)
    sam.image_encoder.grad_checkpointing = checkpointing
    return sam.train()


def shared_contenders(size: int, names: list[str]) -> tuple[dict, dict, dict]:
    """The contenders `names` over ONE set of sam_vit_b weights (a shared 2-core, 23 GB machine
    has no room for three copies beside a full fine-tuning step): each is a copy of the module
    tree sharing the base parameters, with the trainable flags `trainable_sam` gives it, set
    again before each of its steps. Returns models, flags and (trainable, total) counts."""
    base = build("b", size)
    models, flags, counts = {}, {}, {}
    for name in names:
        options = CONTENDERS[name]
        reference = build("b", size, **options)  # the code sam-train runs, for flags and counts
        flags[name] = {n: p.requires_grad for n, p in reference.named_parameters()}
        counts[name] = count_parameters(reference)
        del reference
        model = copy.deepcopy(base, {id(p): p for p in base.parameters()})
        if "peft" in options:
            add_lora(model, options["peft"])
        model.image_encoder.grad_checkpointing = options.get("checkpointing", False)
        models[name] = model
    return models, flags, counts


def with_flags(model, flags: dict, fn):
    def run():
        for n, p in model.named_parameters():
            p.grad = None  # another contender's gradients on the shared weights
            p.requires_grad_(flags[n])
        return fn()

    return run


def make_train_step(sam, flags: dict, images, gt, rounds: int):
    """`forward_with_graph`, backward, AdamW over this contender's trainable parameters, with
    AdamW's state created up front (one zero-gradient update) so that no timed or profiled step
    pays for it."""
    params = [p for n, p in sam.named_parameters() if flags[n]]
    opt = torch.optim.AdamW(params, lr=1e-5)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    forward = forward_with_graph(sam, images, gt, rounds)

    def step() -> None:
        forward().backward()
        opt.step()

    return with_flags(sam, flags, step)


def measure(size: int, masks: int, rounds: int, reps: int, names: list[str]) -> dict:
    """reps >= 1: interleaved timed steps, then one profiled step each for memory; reps = 0
    (a loaded machine): the profiled step is also the timed one (profiler overhead included)."""
    images = torch.randn(1, 3, size, size)
    gt = torch.zeros(masks, size, size, dtype=torch.bool)
    for i in range(masks):  # one rectangle per mask
        a = (i * 7) % (size // 2)
        gt[i, a : a + size // 4, a : a + size // 3] = True
    models, flags, counts = shared_contenders(size, names)
    steps = {n: make_train_step(m, flags[n], images, gt, rounds) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    if reps:
        times = interleaved(steps, reps=reps, warmup=1)
        print({n: [round(t, 1) for t in ts] for n, ts in times.items()}, flush=True)
    peak, held = {}, {}
    for name, sam in models.items():
        with_flags(sam, flags[name], lambda: None)()  # frees the last step's gradients first
        t0 = time.perf_counter()
        peak[name] = peak_cpu_bytes(steps[name])
        if not reps:
            times[name].append(time.perf_counter() - t0)
        print(f"{name}: {times[name][-1]:.1f} s, peak step {fmt_si(peak[name], 'B')}", flush=True)
    for name, sam in models.items():
        with_flags(sam, flags[name], lambda: None)()
        held[name] = peak_cpu_bytes(forward_with_graph(sam, images, gt, rounds))
        print(f"{name}: forward {fmt_si(held[name], 'B')}", flush=True)
    out = {}
    for name in models:
        trainable, total = counts[name]
        out[name] = {
            "trainable": trainable,
            "total": total,
            "peak_step_bytes": peak[name],
            "forward_peak_bytes": held[name],
            "resident_bytes": FP32 * (total + 2 * trainable),
            "step_s": median(times[name]),
            "step_s_all": times[name],
            "step_spread": spread(times[name]),
        }
    return out


def forward_with_graph(sam, images, gt, rounds: int):
    """The step's forward and losses (as `make_step`), its graph kept until it returns: the
    peak is what the backward would start from (activations saved for it, plus transients)."""
    k, size = gt.shape[0], images.shape[-1]
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(k, rounds, 2, generator=gen) * size
    labels = torch.ones(k, rounds, dtype=torch.long)

    def forward() -> torch.Tensor:
        emb = sam.embed_images(images)
        gt_low = masks_to_logit_size(gt, (4 * emb.shape[-2], 4 * emb.shape[-1]))

        def one_round(emb, coords, lab, mask_in, first):
            logits, iou = decode_ours(sam, emb, coords, lab, mask_in, first)
            return logits, sam_loss(logits, iou, gt_low)["loss"]

        mask_in, total = None, 0.0
        for r in range(rounds):  # checkpointed, as stage=sam runs them
            args = (emb, points[:, : r + 1], labels[:, : r + 1], mask_in, r == 0)
            logits, loss = checkpoint(one_round, *args, use_reentrant=False)
            total = total + loss
            mask_in = logits[:, :1].detach()
        return total / rounds

    return forward


def encoder_activation_bytes(run: dict, name: str) -> int:
    """What the forward holds for the encoder's backward: its forward peak minus the frozen
    encoder's (which holds only the decoder's graph and the encoder's transients)."""
    return max(run[name]["forward_peak_bytes"] - run["frozen"]["forward_peak_bytes"], 0)


def counts_at_depth(model: str, options: dict) -> tuple[int, int]:
    """(trainable, total) of a full-depth SAM from a two-block twin (one windowed block, one
    global): a ViT-H holds 2.6 GB of fp32 weights this machine need not allocate."""
    size = SAM_SIZES[model]
    options = dict(options)
    freeze = options.pop("freeze", ())
    options.pop("checkpointing", None)  # changes activations, not parameters
    twin = trainable_sam(
        **(asdict(size) | {"encoder_depth": 2, "encoder_global_attn_indexes": (1,)}),
        image_size=1024,
        **options,
    )
    freeze_parts(twin, freeze)
    n_global = len(size.encoder_global_attn_indexes)
    n_windowed = size.encoder_depth - n_global

    def count(only_trainable: bool) -> int:
        total = 0
        for name, p in twin.named_parameters():
            if only_trainable and not p.requires_grad:
                continue
            if name.startswith("image_encoder.blocks.0."):
                total += n_windowed * p.numel()
            elif name.startswith("image_encoder.blocks.1."):
                total += n_global * p.numel()
            else:
                total += p.numel()
        return total

    return count(True), count(False)


def vit_h_on_paper(run: dict) -> dict:
    """sam_vit_h at the same step: parameters counted (`counts_at_depth`); encoder activations
    scaled from the measured sam_vit_b ones by width x depth (1280/768 x 32/12: the same
    64 x 64 tokens per block); the decoder's part of the step as measured at sam_vit_b."""
    scale = (1280 / 768) * (32 / 12)
    out = {}
    for name in run:
        trainable, total = counts_at_depth("h", CONTENDERS[name])
        resident = FP32 * (total + 2 * trainable)
        activations = scale * encoder_activation_bytes(run, name)
        # upper bound: every activation and every gradient held at once, plus the decoder step
        fp32 = resident + activations + FP32 * trainable + run["frozen"]["peak_step_bytes"]
        out[name] = {
            "trainable": trainable,
            "total": total,
            "resident_bytes": resident,
            "encoder_activation_bytes": activations,
            "fp32_bytes": fp32,
            "bf16_autocast_bytes": fp32 - activations / 2,  # activations held in bf16
        }
    return out


def print_table(run: dict, h: dict, size: int) -> None:
    full = run["full"] if "full" in run else next(iter(run.values()))
    print(
        f"| sam_vit_b {size} | trainable | peak step | resident | total | x full | step | x full |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in run.items():
        total = r["peak_step_bytes"] + r["resident_bytes"]
        full_total = full["peak_step_bytes"] + full["resident_bytes"]
        print(
            f"| {name} | {r['trainable'] / 1e6:.2f} M ({100 * r['trainable'] / r['total']:.2f}%) "
            f"| {fmt_si(r['peak_step_bytes'], 'B')} | {fmt_si(r['resident_bytes'], 'B')} "
            f"| {fmt_si(total, 'B')} | {total / full_total:.2f}x | {r['step_s']:.1f} s "
            f"(spread {r['step_spread']:.0%}) | {r['step_s'] / full['step_s']:.2f}x |"
        )
    if {"full", "lora", "lora_ckpt"} <= run.keys():
        total = {n: run[n]["peak_step_bytes"] + run[n]["resident_bytes"] for n in run}
        print(
            f"\nLoRA with activation checkpointing: {total['lora_ckpt'] / total['full']:.2f}x "
            f"full fine-tuning's memory (target <= 0.6x), "
            f"{run['lora_ckpt']['step_s'] / run['lora']['step_s']:.2f}x LoRA's step time "
            "without it (target <= 1.3x)"
        )
    if not h:
        return
    print(
        f"\n| sam_vit_h {size} (arithmetic) | trainable | resident | encoder act. | fp32 | bf16 act. | 24 GB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in h.items():
        fits = "yes" if r["bf16_autocast_bytes"] < 24e9 else "no"
        print(
            f"| {name} | {r['trainable'] / 1e6:.1f} M ({100 * r['trainable'] / r['total']:.2f}%) "
            f"| {fmt_si(r['resident_bytes'], 'B')} | {fmt_si(r['encoder_activation_bytes'], 'B')} "
            f"| {fmt_si(r['fp32_bytes'], 'B')} | {fmt_si(r['bf16_autocast_bytes'], 'B')} | {fits} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--reps", type=int, default=2, help="timed steps per contender (0: the profiled one)"
    )
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument(
        "--contenders",
        default=DEFAULT_CONTENDERS,
        help=f"comma-separated, of {','.join(CONTENDERS)} (sam_vit_h arithmetic needs frozen)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    names = args.contenders.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"--contenders {','.join(unknown)}: pick from {','.join(CONTENDERS)}")
    torch.set_num_threads(args.threads)
    quiet_profiler_logs()
    run = measure(args.size, args.masks, args.rounds, args.reps, names)
    h = vit_h_on_paper(run) if "frozen" in run else {}
    print_table(run, h, args.size)
    result = {
        "machine": machine(),
        "load_average_after": load_average(),
        "args": vars(args) | {"json": str(args.json)},
        "sam_vit_b": run,
        "sam_vit_h_arithmetic": h,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
