"""SAM image-encoder attention with decomposed relative positions: four formulations.

    python benchmarks/bench_attention.py [--reps 3] [--json out.json]

- `dense bias`: the [B, nh, N, N] relative-position bias built and passed to
  `F.scaled_dot_product_attention` as an additive mask (our code before the fold);
- `folded`: the bias folded into the dot product, q' = [q*scale, q.R_h, q.R_w],
  k' = [k, onehot(row), onehot(col)], SDPA with scale 1 (`sam_train.models.vit.fold_rel_pos`;
  our `Attention` with `dense_bias_max_bytes=0`);
- `ours`: our `Attention` as built by default: explicit products with the dense bias where the
  call's [B, nh, N, N] matrix is at most `vit.DENSE_BIAS_MAX_BYTES`, folded above;
- `official`: `segment_anything.modeling.image_encoder.Attention` (explicit q @ k^T, bias
  added, softmax, @ v).

Same weights in all four (outputs compared before timing). Cases: one global block of the
1024-px ViT-B encoder (64 x 64 tokens, width 768, 12 heads, batch 1), one windowed block (the
same grid as 25 windows of 14 x 14 after padding to 70 x 70), and the two blocks of the 256-px
sam_vit_tiny encoder (width 192, 3 heads: global 16 x 16, and 4 windows of 14 x 14 after
padding to 28 x 28). Modes: `forward`
(inference, no_grad) and `train` (forward + backward of a scalar of the output).
Alternating repetitions after warm-up, medians; peak = bytes the CPU allocator holds above
the start (`common.peak_cpu_bytes`). FLOP/s counts the useful work (projections, the two
attention products, the relative-position products) for every formulation; the folded one
does about 3x the attention-product work for global blocks at 1024 (head dim 64 -> 64 + 64 + 64).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.flops import attention_flops, linear_flops, rel_pos_flops
from sam_train.models.vit import Attention, decomposed_rel_pos_bias


class DenseBiasAttention(Attention):
    """Our attention with the relative-position bias materialised as an [N, N] mask."""

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = decomposed_rel_pos_bias(q, hw, self.rel_pos_h, self.rel_pos_w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def build(dim: int, heads: int, side: int, seed: int = 0):
    from segment_anything.modeling.image_encoder import Attention as OfficialAttention

    torch.manual_seed(seed)
    official = OfficialAttention(
        dim, heads, qkv_bias=True, use_rel_pos=True, input_size=(side, side)
    )
    with torch.no_grad():  # non-zero relative tables, as after training
        official.rel_pos_h.normal_(std=0.02)
        official.rel_pos_w.normal_(std=0.02)
    ours = Attention(dim, heads, rel_pos_size=side)
    folded = Attention(dim, heads, rel_pos_size=side, dense_bias_max_bytes=0)
    dense = DenseBiasAttention(dim, heads, rel_pos_size=side)
    for m in (ours, folded, dense):
        m.load_state_dict(official.state_dict())
    return {"dense bias": dense, "folded": folded, "ours": ours, "official": official}


def case_flops(seqs: int, side: int, dim: int, heads: int) -> float:
    n = side * side
    return (
        linear_flops(seqs * n, dim, 3 * dim)
        + linear_flops(seqs * n, dim, dim)
        + attention_flops(seqs, heads, n, n, dim // heads)
        + rel_pos_flops(seqs, heads, side, side, dim // heads)
    )


def bench_case(
    name: str, seqs: int, side: int, dim: int, heads: int, reps: int, warmup: int, peak: float
) -> list[dict]:
    modules = build(dim, heads, side)
    x = torch.randn(seqs, side * side, dim) * 0.5
    x_grid = x.reshape(seqs, side, side, dim)
    hw = (side, side)

    def run(label: str, m):
        return m(x_grid) if label == "official" else m(x, hw).reshape(seqs, side, side, dim)

    with torch.no_grad():
        ref = run("official", modules["official"])
        err = {k: float((run(k, m) - ref).abs().max()) for k, m in modules.items()}

    def forward(label, m):
        def f():
            with torch.no_grad():
                run(label, m)

        return f

    def train(label, m):
        def f():
            m.zero_grad(set_to_none=True)
            run(label, m).square().mean().backward()

        return f

    fwd_flops = case_flops(seqs, side, dim, heads)
    rows = []
    for mode, make, flops in (("forward", forward, fwd_flops), ("train", train, 3 * fwd_flops)):
        fns = {k: make(k, m) for k, m in modules.items()}
        probe = common.MatmulProbe()
        times = common.interleaved({**fns, "matmul": probe}, reps=reps, warmup=warmup)
        ceiling = max(peak, probe.rate(times.pop("matmul")))
        for k, f in fns.items():
            t = common.median(times[k])
            rows.append(
                {
                    "case": name,
                    "mode": mode,
                    "impl": k,
                    "s": t,
                    "spread": common.spread(times[k]),
                    "flops_per_s": flops / t,
                    "matmul_flops_per_s": ceiling,
                    "fraction_of_matmul_peak": flops / t / ceiling,
                    "peak_bytes": common.peak_cpu_bytes(f),
                    "max_abs_err_vs_official": err[k],
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help=common.THREADS_HELP)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    peak = common.start(a.threads)
    print(f"machine fp32 matmul rate: {common.fmt_si(peak['flops_per_s'], 'FLOP/s')}")
    dim, heads = 768, 12
    rows = bench_case("global 64x64", 1, 64, dim, heads, a.reps, a.warmup, peak["flops_per_s"])
    # 64 x 64 padded to 70 x 70 = 25 windows of 14 x 14
    rows += bench_case(
        "window 25x(14x14)", 25, 14, dim, heads, a.reps + 2, a.warmup, peak["flops_per_s"]
    )
    # sam_vit_tiny at 256 px: a 16 x 16 grid, padded to 28 x 28 = 4 windows of 14 x 14
    tiny_reps = 4 * a.reps + 3
    rows += bench_case("tiny global 16x16", 1, 16, 192, 3, tiny_reps, a.warmup, peak["flops_per_s"])
    rows += bench_case(
        "tiny window 4x(14x14)", 4, 14, 192, 3, tiny_reps, a.warmup, peak["flops_per_s"]
    )
    print(
        f"{'case':21} {'mode':8} {'impl':11} {'s':>8} {'spread':>7} {'vs folded':>9} "
        f"{'FLOP/s':>13} {'of peak':>8} {'peak mem':>10} {'err':>8}"
    )
    for r in rows:
        folded = next(
            x
            for x in rows
            if x["case"] == r["case"] and x["mode"] == r["mode"] and x["impl"] == "folded"
        )
        print(
            f"{r['case']:21} {r['mode']:8} {r['impl']:11} {r['s']:8.3f} {r['spread']:7.1%} "
            f"{r['s'] / folded['s']:8.2f}x {common.fmt_si(r['flops_per_s'], 'FLOP/s'):>13} "
            f"{r['fraction_of_matmul_peak']:8.1%} {common.fmt_si(r['peak_bytes'], 'B'):>10} "
            f"{r['max_abs_err_vs_official']:8.1e}"
        )
    common.write_report({"machine": common.machine(), "matmul": peak, "rows": rows}, a.json)


if __name__ == "__main__":
    main()
