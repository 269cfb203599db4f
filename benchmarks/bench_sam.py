"""Stage-2 training step: our SAM modules against the `segment-anything` package's modules.

    python benchmarks/bench_sam.py [--sizes 256,1024] [--reps 3] [--model b]
        [--precisions fp32,bf16] [--no-peer] [--json out.json]
    python benchmarks/bench_sam.py --scaling            # 1 mask x 1 round vs 64 masks x 11 rounds
    python benchmarks/bench_sam.py --decoder [--masks 16]  # decoder + losses only, per mask

One step = image encoder forward once, then R prompting rounds for K masks on that embedding
(round 0 a point per mask; later rounds add a point and feed the previous low-res logits as the
mask prompt), SAM's losses (`sam_train.losses.sam_loss`), backward, AdamW step. Both sides run
the *same driver* with the same weights (ours mapped into the official layout), same prompts;
only the modules differ: ours (fused SDPA attention, shared ViT) vs segment-anything's
(attention by hand, the full N x N attention matrix with its relative-position bias).
`--precisions fp32,bf16` adds both sides' step under CPU bf16 autocast (fp32 weights and
optimiser, as `trainer.precision=bf16-mixed`) to the same interleaved rounds.
Images/s and ratios come from interleaved repetitions in one process; peak step memory from
torch's CPU allocator (`common.peak_cpu_bytes`); encoder FLOP/s from `flops.sam_encoder_flops`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.checkpoint import checkpoint

from benchmarks import common
from benchmarks.flops import sam_encoder_flops
from sam_train.cpu_precision import cpu_bf16_units
from sam_train.losses import masks_to_logit_size, sam_loss
from sam_train.models.sam.sam import build_sam_vit
from sam_train.weights.keymaps import sam_state_to_official
from sam_train.weights.official import build_official_sam


def official_sam(ours):
    """segment-anything's modules at our architecture, with our weights."""
    sam = build_official_sam(ours.architecture)
    sam.load_state_dict(sam_state_to_official(ours.state_dict()), strict=True)
    return sam


def encoder_flops(sam, size: int):
    """Analytic FLOPs (`flops.sam_encoder_flops`) of `sam`'s image encoder on one image."""
    a = sam.architecture
    return sam_encoder_flops(
        1,
        size,
        a["patch_size"],
        a["encoder_embed_dim"],
        a["encoder_depth"],
        a["encoder_num_heads"],
        a["window_size"],
        tuple(a["encoder_global_attn_indexes"]),
    )


def decode_ours(sam, emb, coords, labels, mask_in, multimask):
    return sam.decode(
        emb,
        points=(coords, labels),
        mask_inputs=mask_in,
        image_index=torch.zeros(coords.shape[0], dtype=torch.long, device=coords.device),
        multimask_output=multimask,
    )


def decode_official(sam, emb, coords, labels, mask_in, multimask):
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=mask_in)
    # the official decoder repeats one image embedding per prompt itself
    return sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask)


def make_step(
    sam,
    embed,
    decode,
    images,
    gt,
    rounds: int,
    checkpoint_rounds: bool = False,
    autocast_dtype: torch.dtype | None = None,
):
    """A closure running one training step with `rounds` rounds for the K masks in `gt`, on
    the device of `images`; `checkpoint_rounds` recomputes each round's decoder in the
    backward (as `InteractiveConfig.checkpoint_rounds`) instead of holding every round's graph;
    `autocast_dtype` runs forward and losses under autocast (bf16 on a GPU)."""
    dev = images.device
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda")
    k, size = gt.shape[0], images.shape[-1]
    gen = torch.Generator().manual_seed(0)
    points = (torch.rand(k, rounds, 2, generator=gen) * size).to(dev)  # same prompts every step
    labels = torch.ones(k, rounds, dtype=torch.long, device=dev)
    gt = gt.to(dev)

    def one_round(emb, coords, labels, mask_in, first, gt_low):
        logits, iou = decode(sam, emb, coords, labels, mask_in, first)
        return logits, sam_loss(logits, iou, gt_low)["loss"]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            emb = embed(sam, images)  # once per image
            mask_in, total = None, 0.0
            gt_low = masks_to_logit_size(gt, (4 * emb.shape[-2], 4 * emb.shape[-1]))
            for r in range(rounds):
                args = (emb, points[:, : r + 1], labels[:, : r + 1], mask_in, r == 0, gt_low)
                if checkpoint_rounds:
                    logits, loss = checkpoint(one_round, *args, use_reentrant=False)
                else:
                    logits, loss = one_round(*args)
                total = total + loss
                mask_in = logits[:, :1].detach()
        (total / rounds).backward()
        opt.step()

    return step


def bench_size(
    size: int, masks: int, rounds: int, reps: int, model: str = "b", bf16: bool = False
) -> dict:
    torch.manual_seed(0)
    ours = build_sam_vit(model, image_size=size)
    theirs = official_sam(ours)
    images = torch.randn(1, 3, size, size)
    gt = torch.zeros(masks, size, size, dtype=torch.bool)
    for i in range(masks):  # one square object per mask
        a = (i * 7) % (size // 2)
        gt[i, a : a + size // 4, a : a + size // 3] = True
    sides = {
        "ours": (ours, lambda s, x: s.embed_images(x), decode_ours),
        "segment_anything": (theirs, lambda s, x: s.image_encoder(x), decode_official),
    }
    dtypes = {"": None, "_bf16": torch.bfloat16} if bf16 else {"": None}
    steps = {
        name + suffix: make_step(*side, images, gt, rounds, autocast_dtype=dtype)
        for suffix, dtype in dtypes.items()
        for name, side in sides.items()
    }
    times = common.interleaved(steps, reps=reps, warmup=1)
    memory = {name: common.peak_cpu_bytes(fn) for name, fn in steps.items()}
    enc = encoder_flops(ours, size)
    t_ours, t_theirs = common.median(times["ours"]), common.median(times["segment_anything"])
    extra = {}
    if bf16:
        t = {name: common.median(v) for name, v in times.items()}
        extra = {
            "step_s_bf16": {"ours": t["ours_bf16"], "segment_anything": t["segment_anything_bf16"]},
            "speed_ratio_bf16_ours_over_theirs": t["segment_anything_bf16"] / t["ours_bf16"],
            "speedup_bf16_over_fp32_ours": t["ours"] / t["ours_bf16"],
            "speedup_bf16_over_fp32_segment_anything": t["segment_anything"]
            / t["segment_anything_bf16"],
        }
    return extra | {
        "model": f"sam_vit_{model}",
        "image_size": size,
        "masks": masks,
        "rounds": rounds,
        "step_s": {"ours": t_ours, "segment_anything": t_theirs},
        "speed_ratio_ours_over_theirs": t_theirs / t_ours,
        "peak_step_bytes": memory,
        "memory_ratio_ours_over_theirs": memory["ours"] / memory["segment_anything"],
        "encoder_train_flops": enc.train,
    }


def ours_bf16_over_fp32(size: int, reps: int, model: str = "b") -> dict:
    """Our step (one mask, one round) in fp32 and under CPU bf16 autocast, alternating: the
    precision ratio alone, without segment-anything's step beside it (at 1024 its N x N
    attention matrices need ~8 GB, which a shared machine may not have)."""
    torch.manual_seed(0)
    ours = build_sam_vit(model, image_size=size)
    images = torch.randn(1, 3, size, size)
    gt = torch.zeros(1, size, size, dtype=torch.bool)
    gt[0, : size // 4, : size // 3] = True
    side = (ours, lambda s, x: s.embed_images(x), decode_ours)
    steps = {
        "fp32": make_step(*side, images, gt, 1),
        "bf16": make_step(*side, images, gt, 1, autocast_dtype=torch.bfloat16),
    }
    times = common.interleaved(steps, reps=reps, warmup=1)
    t = {k: common.median(v) for k, v in times.items()}
    return {
        "model": f"sam_vit_{model}",
        "image_size": size,
        "step_s": t,
        "spread": {k: common.spread(v) for k, v in times.items()},
        "speedup_bf16_over_fp32_ours": t["fp32"] / t["bf16"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scaling", action="store_true", help="1x1 vs 64x11 at 1024 (ours only)")
    parser.add_argument("--decoder", action="store_true", help="decoder step only, per mask")
    parser.add_argument("--masks", type=int, default=16, help="prompts per --decoder step")
    parser.add_argument("--threads", type=int, default=1, help=common.THREADS_HELP)
    parser.add_argument("--model", default="b", help="SAM size of the step: tiny, b, l, h")
    parser.add_argument("--precisions", default="fp32", help="fp32, or fp32,bf16 (CPU autocast)")
    parser.add_argument(
        "--no-peer", action="store_true", help="with --precisions fp32,bf16: our step only"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    bf16 = "bf16" in args.precisions.split(",")
    torch.set_num_threads(args.threads)
    common.quiet_profiler_logs()
    rate = common.matmul_rate()
    results = {
        "machine": common.machine() | {"bf16_matmul_units": cpu_bf16_units()},
        "matmul_fp32_flops_per_s": rate["flops_per_s"],
        "runs": [],
    }
    if args.scaling:
        results["runs"].append(scaling(args.reps, args.threads))
    elif args.decoder:
        results["runs"].append(decoder(args.masks, args.reps))
    elif args.no_peer:
        for size in [int(s) for s in args.sizes.split(",")]:
            r = ours_bf16_over_fp32(size, args.reps, args.model)
            results["runs"].append(r)
            print(
                f"sam_vit_{args.model} @ {size}, ours: fp32 {r['step_s']['fp32']:.2f} s/step, "
                f"bf16 {r['step_s']['bf16']:.2f} s/step -> {r['speedup_bf16_over_fp32_ours']:.2f}x",
                flush=True,
            )
    else:
        for size in [int(s) for s in args.sizes.split(",")]:
            r = bench_size(size, masks=1, rounds=1, reps=args.reps, model=args.model, bf16=bf16)
            r["encoder_flops_fraction_of_matmul_rate"] = (
                r["encoder_train_flops"] / r["step_s"]["ours"] / rate["flops_per_s"]
            )
            results["runs"].append(r)
            if bf16:
                print(
                    f"bf16 @ {size}: ours {r['step_s_bf16']['ours']:.2f} s/step, "
                    f"segment-anything {r['step_s_bf16']['segment_anything']:.2f} s/step -> "
                    f"{r['speed_ratio_bf16_ours_over_theirs']:.2f}x; bf16 over fp32: ours "
                    f"{r['speedup_bf16_over_fp32_ours']:.2f}x, segment-anything "
                    f"{r['speedup_bf16_over_fp32_segment_anything']:.2f}x",
                    flush=True,
                )
            print(
                f"sam_vit_{args.model} @ {size}: ours {r['step_s']['ours']:.2f} s/step, segment-anything "
                f"{r['step_s']['segment_anything']:.2f} s/step -> {r['speed_ratio_ours_over_theirs']:.2f}x; "
                f"peak memory {common.fmt_si(r['peak_step_bytes']['ours'], 'B')} vs "
                f"{common.fmt_si(r['peak_step_bytes']['segment_anything'], 'B')} "
                f"({r['memory_ratio_ours_over_theirs']:.2f}x); encoder at "
                f"{r['encoder_flops_fraction_of_matmul_rate']:.0%} of the matmul rate",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def scaling(reps: int, threads: int) -> dict:
    """Our step at sam_vit_b 1024: 1 mask x 1 round against 64 masks x 11 rounds, both with
    checkpointed rounds (64 x 11 would otherwise hold ~70 GB of decoder graphs)."""
    torch.manual_seed(0)
    ours = build_sam_vit("b", image_size=1024)
    images = torch.randn(1, 3, 1024, 1024)
    out: dict = {"threads": threads, "checkpoint_rounds": True}
    for masks, rounds, n in [(1, 1, reps), (64, 11, 1)]:
        gt = torch.zeros(masks, 1024, 1024, dtype=torch.bool)
        gt[:, 100:400, 200:600] = True
        step = make_step(
            ours, lambda s, x: s.embed_images(x), decode_ours, images, gt, rounds, True
        )
        key = f"{masks}x{rounds}"
        out[key] = common.median(
            common.interleaved({"s": step}, reps=n, warmup=1 if n > 1 else 0)["s"]
        )
        print(f"{masks} masks x {rounds} rounds: {out[key]:.2f} s/step", flush=True)
    out["ratio_64x11_over_1x1"] = out["64x11"] / out["1x1"]
    out["decoder_s_per_mask_round"] = (out["64x11"] - out["1x1"]) / (64 * 11 - 1)
    print(
        f"64x11 costs {out['ratio_64x11_over_1x1']:.2f}x of 1x1 "
        f"({out['decoder_s_per_mask_round'] * 1e3:.0f} ms per extra mask-round)",
        flush=True,
    )
    return out


def decoder_steps(
    masks: int,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    image_size: int = 1024,
):
    """Closures for prompt encoder + mask decoder + losses + backward for `masks` prompts on one
    image embedding (of an `image_size` px image; 2 points and a mask prompt each,
    single-mask output), ours and segment-anything's (same weights), and the max |logit
    difference| between them."""
    torch.manual_seed(0)
    ours = build_sam_vit("b", image_size=image_size).to(device)
    theirs = official_sam(ours).to(device)
    grid = image_size // 16
    gen = torch.Generator().manual_seed(0)
    emb0 = torch.randn(1, 256, grid, grid, generator=gen).to(device)
    coords = (torch.rand(masks, 2, 2, generator=gen) * image_size).to(device)
    labels = torch.ones(masks, 2, dtype=torch.long, device=device)
    mask_in = torch.randn(masks, 1, 4 * grid, 4 * grid, generator=gen).to(device)
    gt = torch.zeros(masks, 4 * grid, 4 * grid, device=device)
    gt[:, grid * 25 // 64 : grid * 100 // 64, grid * 50 // 64 : grid * 150 // 64] = 1.0

    def run(sam, decode):
        def step():
            emb = emb0.clone().requires_grad_(True)
            with torch.autocast(
                emb.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits, iou = decode(sam, emb, coords, labels, mask_in, False)
                loss = sam_loss(logits, iou, gt)["loss"]
            loss.backward()
            return logits.detach().float()

        return step

    steps = {"ours": run(ours, decode_ours), "segment_anything": run(theirs, decode_official)}
    diff = (steps["ours"]() - steps["segment_anything"]()).abs().max().item()
    return steps, diff


def decoder(masks: int, reps: int) -> dict:
    """The decoder step (`decoder_steps`) on the CPU: the part of a step that grows with
    masks x rounds."""
    steps, diff = decoder_steps(masks)
    times = common.interleaved(steps, reps=reps, warmup=1)
    memory = {name: common.peak_cpu_bytes(fn) for name, fn in steps.items()}
    t_ours, t_theirs = common.median(times["ours"]), common.median(times["segment_anything"])
    out = {
        "masks": masks,
        "max_abs_logit_diff": diff,
        "ms_per_mask": {"ours": t_ours / masks * 1e3, "segment_anything": t_theirs / masks * 1e3},
        "speed_ratio_ours_over_theirs": t_theirs / t_ours,
        "peak_step_bytes": memory,
        "memory_ratio_ours_over_theirs": memory["ours"] / memory["segment_anything"],
    }
    print(
        f"decoder, {masks} masks: ours {out['ms_per_mask']['ours']:.0f} ms/mask, "
        f"segment-anything {out['ms_per_mask']['segment_anything']:.0f} ms/mask -> "
        f"{out['speed_ratio_ours_over_theirs']:.2f}x; peak memory "
        f"{common.fmt_si(memory['ours'], 'B')} vs {common.fmt_si(memory['segment_anything'], 'B')} "
        f"({out['memory_ratio_ours_over_theirs']:.2f}x); max |logit diff| {diff:.1e}",
        flush=True,
    )
    return out


if __name__ == "__main__":
    main()
