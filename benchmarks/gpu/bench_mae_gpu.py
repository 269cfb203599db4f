"""Stage-1 training step on one GPU: our `MaskedAutoencoder` against
`transformers.ViTMAEForPreTraining` (same shapes, same weights), bf16 autocast.

    python benchmarks/gpu/bench_mae_gpu.py [--sizes tiny,base,large] [--batch 64] [--json out.json]

The GPU twin of `benchmarks/bench_mae.py`: forward (bf16 autocast, fp32 weights), backward,
fused AdamW step; contenders alternate after warm-up, `torch.cuda.synchronize()` around
every timed step, median of repetitions. Reports images/s, ours/theirs, peak memory
(`torch.cuda.max_memory_allocated`, reset before each contender's measured step), and MFU:
analytic train FLOPs (`benchmarks/flops.py`) per second over the GPU's peak dense bf16 rate
(a table of known parts; `--peak-tflops` for others). Refuses to run without CUDA: CPU
figures come from bench_mae.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from benchmarks.bench_mae import MaeSize, build_pair, same_function
from benchmarks.common import interleaved, machine, median, spread
from benchmarks.gpu.cuda_timing import peak_bf16, peak_memory, synced

SIZES = {
    "tiny": MaeSize("tiny", 256, 192, 12, 3, 128, 2, 4),
    "base": MaeSize("base", 128, 768, 12, 12, 512, 8, 16),
    "large": MaeSize("large", 64, 1024, 24, 16, 512, 8, 16),
}


def cuda_step(model, forward, dtype: torch.dtype):
    opt = torch.optim.AdamW(
        model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = forward()
        loss.backward()
        opt.step()

    return step


def bench(size: MaeSize, reps: int, warmup: int, peak: float | None) -> dict:
    ours, theirs = build_pair(size)
    dev = torch.device("cuda")
    ours, theirs = ours.to(dev), theirs.to(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    imgs = torch.randn(size.batch, 3, size.img_size, size.img_size, device=dev, generator=g)
    noise = torch.rand(size.batch, (size.img_size // size.patch_size) ** 2, device=dev, generator=g)
    diff = same_function(ours, theirs, imgs, noise)  # fp32: the two must agree
    steps = {
        "ours": cuda_step(ours, lambda: ours(imgs, noise=noise)[0], torch.bfloat16),
        "transformers": cuda_step(
            theirs, lambda: theirs(pixel_values=imgs, noise=noise).loss, torch.bfloat16
        ),
    }
    times = interleaved({k: synced(s) for k, s in steps.items()}, reps, warmup)
    memory = {k: peak_memory(s) for k, s in steps.items()}
    flops = size.flops().train
    rows = {}
    for k in steps:
        t = median(times[k])
        rows[k] = {
            "s_per_step": t,
            "spread": spread(times[k]),
            "images_per_s": size.batch / t,
            "flops_per_s": flops / t,
            "mfu": flops / t / peak if peak else None,
            "peak_bytes": memory[k],
        }
    return {
        "size": size.__dict__,
        "loss_abs_diff": diff,
        "train_flops_per_step": flops,
        **rows,
        "ratio_images_per_s": rows["ours"]["images_per_s"] / rows["transformers"]["images_per_s"],
        "ratio_peak_memory": rows["ours"]["peak_bytes"] / rows["transformers"]["peak_bytes"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,base,large")
    p.add_argument("--batch", type=int, default=None, help="override every size's batch")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_mae_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "for CPU figures run benchmarks/bench_mae.py"
        )
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name, a.peak_tflops)
    print(f"{name}: peak dense bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    results = []
    for s in a.sizes.split(","):
        size = SIZES[s] if a.batch is None else MaeSize(**{**SIZES[s].__dict__, "batch": a.batch})
        r = bench(size, a.reps, a.warmup, peak)
        results.append(r)
        print(f"\n== {s}: batch {size.batch}, |dloss| fp32 {r['loss_abs_diff']:.1e}")
        for k in ("ours", "transformers"):
            row = r[k]
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
            print(
                f"{k:13} {row['images_per_s']:9.1f} images/s  {row['s_per_step'] * 1e3:8.1f} ms "
                f"(spread {row['spread']:.1%})  MFU {mfu:>6}  peak {row['peak_bytes'] / 2**30:.2f} GiB"
            )
        print(
            f"ours/transformers: images/s x{r['ratio_images_per_s']:.3f}, "
            f"memory x{r['ratio_peak_memory']:.3f}"
        )
    out = {"machine": {**machine(), "gpu": name}, "peak_bf16_flops": peak, "results": results}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
