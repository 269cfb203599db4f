"""Stage-1 training step: our `MaskedAutoencoder` against `transformers.ViTMAEForPreTraining`.

    python benchmarks/bench_mae.py [--sizes tiny,base] [--reps 8] [--precisions fp32,bf16]
        [--json out.json]

One step = forward (loss), backward, AdamW step (zero_grad(set_to_none) first), fp32, on the
CPU with torch's default thread count. Both models have the same shape (encoder width, depth,
heads; decoder width, depth, heads; mask ratio 0.75; norm_pix_loss) and the same weights (ours
copied into theirs; the losses are compared before timing), and see the same images and masking
noise. They alternate in one process after warm-up; each figure is the median over repetitions.

Sizes: `base` = ViT-B/16 at 224, batch 8, decoder 512 x 8 blocks, 16 heads (the MAE paper);
`tiny` = width 192, depth 12, 3 heads at 224, batch 32, with our tiny config's decoder
(128 x 2 blocks, 4 heads; conf/model/mae_vit_tiny.yaml).

`--precisions fp32,bf16` adds both models' step under `torch.autocast("cpu", bfloat16)` (fp32
weights and optimiser, as `trainer.precision=bf16-mixed` runs it) to the same interleaved
rounds, after checking each model's bf16 loss against its fp32 loss; worth it only on a CPU
with bf16 matmul units (`sam_train.cpu_precision.cpu_bf16_units`, printed with the results).

Reports images/s, ours/theirs, peak step memory (bytes the CPU allocator holds above the
step's start; see `common.peak_cpu_bytes`), and achieved FLOP/s (analytic, `flops.py`) as a
fraction of the measured fp32 matmul rate. The analytic count is checked against
`torch.utils.flop_counter.FlopCounterMode` plus the attention products it does not see.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common
from benchmarks.flops import attention_flops, mae_train_flops
from sam_train.cpu_precision import cpu_bf16_units
from sam_train.models.mae import MaskedAutoencoder


@dataclass(frozen=True)
class MaeSize:
    name: str
    batch: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    img_size: int = 224
    patch_size: int = 16
    mask_ratio: float = 0.75

    def model_kwargs(self) -> dict:
        kw = asdict(self)
        del kw["name"], kw["batch"]
        return kw

    def flops(self):
        return mae_train_flops(
            self.batch,
            self.img_size,
            self.patch_size,
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.decoder_embed_dim,
            self.decoder_depth,
            self.decoder_num_heads,
            self.mask_ratio,
        )


SIZES = {
    "base": MaeSize("base", 8, 768, 12, 12, 512, 8, 16),
    "tiny": MaeSize("tiny", 32, 192, 12, 3, 128, 2, 4),
}


def build_pair(size: MaeSize, seed: int = 0):
    torch.manual_seed(seed)
    ours = MaskedAutoencoder(**size.model_kwargs(), norm_pix_loss=True).train()
    theirs = common.hf_vitmae(ours).train()
    return ours, theirs


def make_step(model, forward, lr: float = 1.5e-4, opt=None, bf16: bool = False):
    """A closure running one training step; same AdamW settings for both contenders (`opt`:
    one already made for `model`, shared by its fp32 and bf16 steps); `bf16`: the forward
    and loss under CPU bf16 autocast."""
    if opt is None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward()
        loss.backward()
        opt.step()
        return loss

    return step


def adamw(model, lr: float = 1.5e-4):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)


def bf16_loss_error(forward) -> float:
    """|loss under bf16 autocast - fp32 loss| / fp32 loss, same weights and batch."""
    with torch.no_grad():
        full = forward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = forward()
    return float((low.float() - full).abs() / full.abs())


def same_function(ours, theirs, imgs, noise) -> float:
    """|loss_ours - loss_theirs| with equal weights, images and noise (they must compute the same)."""
    with torch.no_grad():
        a = ours(imgs, noise=noise)[0]
        b = theirs(pixel_values=imgs, noise=noise).loss
    return float((a - b).abs())


def counted_flops(ours, imgs, noise, size: MaeSize) -> float:
    """FlopCounterMode on forward + backward of ours, plus the SDPA products it does not count."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        ours(imgs, noise=noise)[0].backward()
    ours.zero_grad(set_to_none=True)
    grid = (size.img_size // size.patch_size) ** 2
    kept = int(grid * (1 - size.mask_ratio))
    attn = size.depth * attention_flops(
        size.batch, size.num_heads, 1 + kept, 1 + kept, size.embed_dim // size.num_heads
    )
    attn += size.decoder_depth * attention_flops(
        size.batch,
        size.decoder_num_heads,
        1 + grid,
        1 + grid,
        size.decoder_embed_dim // size.decoder_num_heads,
    )
    sdpa_counted = sum(
        v for k, v in counter.get_flop_counts()["Global"].items() if "attention" in str(k)
    )
    extra = 3.0 * attn if sdpa_counted == 0 else 0.0  # forward + backward (2x) of the products
    return counter.get_total_flops() + extra


def bench_size(
    size: MaeSize, reps: int, warmup: int, peak: float, bf16_peak: float | None = None
) -> dict:
    """fp32 steps of both models; with `bf16_peak` (the bf16 matmul rate) their bf16 steps too."""
    bf16 = bf16_peak is not None
    ours, theirs = build_pair(size)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(size.batch, 3, size.img_size, size.img_size, generator=g)
    grid = (size.img_size // size.patch_size) ** 2
    noise = torch.rand(size.batch, grid, generator=g)
    diff = same_function(ours, theirs, imgs, noise)
    if diff > 1e-4:
        raise SystemExit(f"{size.name}: ours and transformers disagree (|dloss| = {diff:.2e})")

    forward = {
        "ours": lambda: ours(imgs, noise=noise)[0],
        "transformers": lambda: theirs(pixel_values=imgs, noise=noise).loss,
    }
    models = {"ours": ours, "transformers": theirs}
    opts = {name: adamw(model) for name, model in models.items()}
    steps = {name: make_step(models[name], forward[name], opt=opts[name]) for name in models}
    bf16_errors = {}
    if bf16:
        for name in models:
            bf16_errors[name] = bf16_loss_error(forward[name])
            if bf16_errors[name] > 0.02:
                raise SystemExit(
                    f"{size.name}: {name}'s bf16 loss is {bf16_errors[name]:.1%} off fp32"
                )
            steps[f"{name}_bf16"] = make_step(
                models[name], forward[name], opt=opts[name], bf16=True
            )
    probe = common.MatmulProbe()
    times = common.interleaved({**steps, "matmul": probe}, reps=reps, warmup=warmup)
    # the ceiling: the best of the start-up measurement and the probe run among the steps
    peak = max(peak, probe.rate(times.pop("matmul")))
    # peak memory after warm-up: optimiser state exists, gradients start as None
    memory = {name: common.peak_cpu_bytes(step) for name, step in steps.items()}
    flops = size.flops()
    counted = counted_flops(ours, imgs, noise, size)

    rows = {}
    for name in steps:
        t = common.median(times[name])
        rows[name] = {
            "s_per_step": t,
            "spread": common.spread(times[name]),
            "images_per_s": size.batch / t,
            "flops_per_s": flops.train / t,
            "fraction_of_matmul_peak": flops.train / t / (bf16_peak if "bf16" in name else peak),
            "peak_step_bytes": memory[name],
        }
    out = {
        "size": asdict(size),
        "loss_abs_diff": diff,
        "matmul_flops_per_s": peak,
        "train_flops_per_step": flops.train,
        "flop_counter_check": counted,
        "flops_by_part": flops.parts,
        "ours": rows["ours"],
        "transformers": rows["transformers"],
        "ratio_images_per_s": rows["ours"]["images_per_s"] / rows["transformers"]["images_per_s"],
        "ratio_peak_memory": rows["ours"]["peak_step_bytes"]
        / rows["transformers"]["peak_step_bytes"],
    }
    if bf16:
        out |= {
            "bf16_loss_relative_error": bf16_errors,
            "ours_bf16": rows["ours_bf16"],
            "transformers_bf16": rows["transformers_bf16"],
            "ratio_bf16_images_per_s": rows["ours_bf16"]["images_per_s"]
            / rows["transformers_bf16"]["images_per_s"],
            "speedup_bf16_over_fp32_ours": rows["ours_bf16"]["images_per_s"]
            / rows["ours"]["images_per_s"],
            "speedup_bf16_over_fp32_transformers": rows["transformers_bf16"]["images_per_s"]
            / rows["transformers"]["images_per_s"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,base")
    p.add_argument("--reps", type=int, default=8, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help=common.THREADS_HELP)
    p.add_argument("--precisions", default="fp32", help="fp32, or fp32,bf16 (CPU autocast)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    bf16 = "bf16" in a.precisions.split(",")
    peak = common.start(a.threads)
    units = cpu_bf16_units()
    print(
        f"machine fp32 matmul rate: {common.fmt_si(peak['flops_per_s'], 'FLOP/s')} "
        f"({peak['size']}^3, {torch.get_num_threads()} threads); bf16 matmul units: "
        f"{units or 'none'}"
    )
    if bf16:
        peak["bf16_flops_per_s"] = bf16_matmul_rate()
        print(f"machine bf16 matmul rate: {common.fmt_si(peak['bf16_flops_per_s'], 'FLOP/s')}")
    results = []
    for name in a.sizes.split(","):
        size = SIZES[name]
        r = bench_size(size, a.reps, a.warmup, peak["flops_per_s"], peak.get("bf16_flops_per_s"))
        results.append(r)
        print(
            f"\n== {name}: batch {size.batch}, |loss ours - loss transformers| = "
            f"{r['loss_abs_diff']:.1e}, train FLOPs/step {common.fmt_si(r['train_flops_per_step'])} "
            f"(FlopCounterMode + SDPA: {common.fmt_si(r['flop_counter_check'])}), matmul ceiling "
            f"{common.fmt_si(r['matmul_flops_per_s'], 'FLOP/s')}"
        )
        print(
            f"{'':14} {'images/s':>9} {'s/step':>8} {'spread':>7} {'FLOP/s':>12} "
            f"{'of peak':>8} {'peak mem':>10}"
        )
        for who in ("ours", "transformers", "ours_bf16", "transformers_bf16")[: 4 if bf16 else 2]:
            row = r[who]
            print(
                f"{who:14} {row['images_per_s']:9.2f} {row['s_per_step']:8.3f} "
                f"{row['spread']:7.1%} {common.fmt_si(row['flops_per_s'], 'FLOP/s'):>12} "
                f"{row['fraction_of_matmul_peak']:8.1%} {common.fmt_si(row['peak_step_bytes'], 'B'):>10}"
            )
        print(
            f"ours/transformers: images/s x{r['ratio_images_per_s']:.3f}, "
            f"peak memory x{r['ratio_peak_memory']:.3f}"
        )
        if bf16:
            print(
                f"bf16: ours/transformers x{r['ratio_bf16_images_per_s']:.3f}; bf16 over fp32: "
                f"ours x{r['speedup_bf16_over_fp32_ours']:.3f}, transformers "
                f"x{r['speedup_bf16_over_fp32_transformers']:.3f}; |bf16 - fp32 loss| "
                + ", ".join(f"{k} {v:.1e}" for k, v in r["bf16_loss_relative_error"].items())
            )
    machine = common.machine() | {"bf16_matmul_units": units}
    common.write_report({"machine": machine, "matmul": peak, "results": results}, a.json)


def bf16_matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a square bf16 matmul, the ceiling bf16 steps run against."""
    return common.square_matmul_rate(n, reps, torch.bfloat16)


if __name__ == "__main__":
    main()
