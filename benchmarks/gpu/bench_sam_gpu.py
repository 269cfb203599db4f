"""Stage-2 benchmarks on one GPU, bf16 autocast: the GPU twin of `benchmarks/bench_sam.py`.

    python benchmarks/gpu/bench_sam_gpu.py [--sizes 1024,256] [--masks 64] [--json out.json]
    python benchmarks/gpu/bench_sam_gpu.py --device cpu --sizes 256 --reps 1 --no-scaling
        (the same code in fp32 on the CPU: a smoke check, not a figure)

Three parts, each the same driver as the CPU benchmark (`bench_sam.make_step`,
`bench_sam.decoder_steps`), with fused AdamW and `torch.cuda.synchronize()` around every
timed step, contenders alternating after warm-up, medians:
1. the training step at sam_vit_b, one mask x one round: ours against segment-anything's
   modules (same weights and prompts): s/step, ratio, peak memory
   (`torch.cuda.max_memory_allocated`), and the image encoder's MFU against the GPU's dense
   bf16 peak (`cuda_timing.PEAK_BF16_TFLOPS`, or `--peak-tflops`);
2. the decoder step for `--masks` prompts on one embedding, ours against segment-anything;
3. scaling: our step for 1 mask x 1 round against 64 masks x 11 rounds, rounds checkpointed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from benchmarks.bench_sam import (
    decode_official,
    decode_ours,
    decoder_steps,
    encoder_flops,
    make_step,
    official_sam,
)
from benchmarks.common import interleaved, machine, median
from benchmarks.gpu.cuda_timing import peak_bf16, peak_memory, synced
from sam_train.models.sam.sam import build_sam_vit


def alternate(steps: dict, reps: int, warmup: int, sync: bool) -> dict[str, float]:
    """Median seconds per call of each contender (`common.interleaved`, GPU synchronised)."""
    times = interleaved({k: synced(s, sync) for k, s in steps.items()}, reps, warmup)
    return {k: median(v) for k, v in times.items()}


def step_vs_official(size: int, reps: int, warmup: int, dev, dtype, peak, model: str = "b") -> dict:
    torch.manual_seed(0)
    ours = build_sam_vit(model, image_size=size).to(dev)
    theirs = official_sam(ours).to(dev)
    images = torch.randn(1, 3, size, size, device=dev)
    gt = torch.zeros(1, size, size, dtype=torch.bool)
    gt[0, size // 8 : size // 2, size // 4 : 3 * size // 4] = True
    steps = {
        "ours": make_step(
            ours, lambda s, x: s.embed_images(x), decode_ours, images, gt, 1, False, dtype
        ),
        "segment_anything": make_step(
            theirs, lambda s, x: s.image_encoder(x), decode_official, images, gt, 1, False, dtype
        ),
    }
    t = alternate(steps, reps, warmup, dev.type == "cuda")
    memory = {k: peak_memory(s, dev.type == "cuda") for k, s in steps.items()}
    flops = encoder_flops(ours, size).train
    return {
        "image_size": size,
        "s_per_step": t,
        "speed_ratio_ours_over_theirs": t["segment_anything"] / t["ours"],
        "peak_bytes": memory,
        "memory_ratio_ours_over_theirs": (
            memory["ours"] / memory["segment_anything"] if memory["segment_anything"] else None
        ),
        "encoder_train_flops": flops,
        "encoder_mfu_ours": flops / t["ours"] / peak if peak else None,
    }


def decoder_vs_official(masks: int, reps: int, warmup: int, dev, dtype) -> dict:
    steps, diff = decoder_steps(masks, str(dev), dtype)
    t = alternate(steps, reps, warmup, dev.type == "cuda")
    return {
        "masks": masks,
        "max_abs_logit_diff": diff,
        "ms_per_mask": {k: v / masks * 1e3 for k, v in t.items()},
        "speed_ratio_ours_over_theirs": t["segment_anything"] / t["ours"],
    }


def scaling(reps: int, warmup: int, dev, dtype) -> dict:
    torch.manual_seed(0)
    ours = build_sam_vit("b", image_size=1024).to(dev)
    images = torch.randn(1, 3, 1024, 1024, device=dev)
    out = {}
    for masks, rounds in [(1, 1), (64, 11)]:
        gt = torch.zeros(masks, 1024, 1024, dtype=torch.bool)
        gt[:, 100:400, 200:600] = True
        step = make_step(
            ours, lambda s, x: s.embed_images(x), decode_ours, images, gt, rounds, True, dtype
        )
        out[f"{masks}x{rounds}"] = alternate({"s": step}, reps, warmup, dev.type == "cuda")["s"]
    out["ratio_64x11_over_1x1"] = out["64x11"] / out["1x1"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,256")
    p.add_argument("--masks", type=int, default=64, help="prompts in the decoder step")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-scaling", action="store_true", help="skip 1x1 vs 64x11")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    p.add_argument("--device", default="cuda", help="cuda; cpu runs a fp32 smoke check")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_sam_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "for CPU figures run benchmarks/bench_sam.py (or pass --device cpu for a smoke check)"
        )
    dtype = torch.bfloat16 if dev.type == "cuda" else None  # no bf16 hardware on our CPUs
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_bf16(name, a.peak_tflops) if dev.type == "cuda" else None
    out: dict = {"machine": {**machine(), "device": name}, "peak_bf16_flops": peak}
    out["steps"] = []
    for size in [int(s) for s in a.sizes.split(",")]:
        r = step_vs_official(size, a.reps, a.warmup, dev, dtype, peak)
        out["steps"].append(r)
        mfu = r["encoder_mfu_ours"]
        print(
            f"step @ {size}: ours {r['s_per_step']['ours'] * 1e3:.1f} ms, segment-anything "
            f"{r['s_per_step']['segment_anything'] * 1e3:.1f} ms -> "
            f"{r['speed_ratio_ours_over_theirs']:.2f}x; memory x"
            f"{r['memory_ratio_ours_over_theirs'] or float('nan'):.2f}; encoder MFU "
            f"{f'{mfu:.1%}' if mfu is not None else 'n/a'}",
            flush=True,
        )
    d = decoder_vs_official(a.masks, a.reps, a.warmup, dev, dtype)
    out["decoder"] = d
    print(
        f"decoder, {a.masks} masks: ours {d['ms_per_mask']['ours']:.2f} ms/mask, "
        f"segment-anything {d['ms_per_mask']['segment_anything']:.2f} -> "
        f"{d['speed_ratio_ours_over_theirs']:.2f}x (max |logit diff| {d['max_abs_logit_diff']:.1e})",
        flush=True,
    )
    if not a.no_scaling:
        out["scaling"] = scaling(max(a.reps // 3, 1), 1, dev, dtype)
        print(f"64x11 costs {out['scaling']['ratio_64x11_over_1x1']:.2f}x of 1x1", flush=True)
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
