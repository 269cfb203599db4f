"""Shared pieces of the benchmarks: timing, the machine's matmul rate, CPU peak memory, the
Hugging Face ViTMAE peer with our weights, machine description.

Timing rules (DESIGN.md, Performance policy): the two contenders run in the same process,
alternating (A B, then B A, ...) after warm-up, and each reports the median of its repetitions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

THREADS_HELP = (
    "torch threads (default 1: on a machine other jobs share, two-thread kernels stall at "
    "every parallel region while a thread waits for a descheduled sibling, and small ops "
    "take milliseconds; one thread gives stable ratios. Pass the core count on an idle machine)"
)


# ------------------------------------------------------------------------------------- machine
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": load_average(),
    }


def square_matmul_rate(n: int, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n `dtype` matmul: the median of `reps` after two warm-up calls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


def matmul_rate(sizes: tuple[int, ...] = (1024, 2048), reps: int = 5) -> dict:
    """The machine's fp32 matmul rate (FLOP/s): best over `sizes` of the median of `reps`
    square matmuls, with the same thread count as the benchmark. The ceiling for FLOP/s figures."""
    rates = {n: square_matmul_rate(n, reps) for n in sizes}
    best = max(rates, key=rates.get)
    return {
        "flops_per_s": rates[best],
        "size": best,
        "by_size": {str(k): v for k, v in rates.items()},
    }


class MatmulProbe:
    """A square fp32 matmul to run among the contenders of `interleaved`: on a shared or
    throttling machine the rate drifts, and the probe sees the same drift as they do.
    `rate(times)` = FLOP/s from the probe's median time."""

    def __init__(self, n: int = 2048) -> None:
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)

    def __call__(self) -> None:
        self.a @ self.b

    def rate(self, times: list[float]) -> float:
        return 2.0 * self.n**3 / statistics.median(times)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ------------------------------------------------------------------------------------- timing
def interleaved(
    contenders: dict[str, Callable[[], object]], reps: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, run alternately (order reversed every round)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Relative range of the repetitions: (max - min) / median (a noisy machine shows here)."""
    return (max(xs) - min(xs)) / statistics.median(xs)


class BatchTimer(L.Callback):
    """Records `time.perf_counter()` at the start of each training batch and around `fit`.
    Class-level lists, so a benchmark reads them after `train(cfg)` built its own instance
    from `+callbacks.batch_timer._target_=benchmarks.common.BatchTimer`."""

    starts: list[float] = []
    ends: list[float] = []
    fit_span: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        BatchTimer.fit_span = [time.perf_counter()]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        BatchTimer.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        BatchTimer.ends.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        BatchTimer.starts.append(time.perf_counter())  # closes the last batch's interval

    def on_fit_end(self, trainer, pl_module) -> None:
        BatchTimer.fit_span.append(time.perf_counter())


# ------------------------------------------------------------------------------------- memory
def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by torch's CPU allocator while `fn` runs, above what it held at the start.

    Read from the profiler's allocation events (every tensor allocation and free, kernels'
    internal buffers included, as reported by c10's CPU allocator). It is what the step adds
    on top of what already exists: activations, gradients (when the step starts with them set
    to None), temporaries; optimiser state counts only if first created in `fn`. It is not RSS
    (no allocator caching, no Python objects, no libraries).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs: list[tuple[int, int]] = []

    def walk(events) -> None:
        for e in events:
            if e.tag == _EventType.Allocation:
                allocs.append((e.start_time_ns, e.extra_fields.alloc_size))
            walk(e.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    live = peak = 0
    for _, size in sorted(allocs):
        live += size
        peak = max(peak, live)
    return peak


def quiet_profiler_logs() -> None:
    """Kineto prints start/stop lines on stderr for every profile; keep the tables readable."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")


# ------------------------------------------------------------------------------------- peers
def hf_vitmae(ours, attn_implementation: str = "sdpa"):
    """`transformers.ViTMAEForPreTraining` of the same shape as our `MaskedAutoencoder`, with
    our weights copied in (so both compute the same function; checked by the callers)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    enc = ours.encoder
    dec0 = ours.decoder_blocks[0]
    mlp_ratio = enc.blocks[0].mlp.fc1.out_features / enc.embed_dim
    cfg = ViTMAEConfig(
        hidden_size=enc.embed_dim,
        num_hidden_layers=enc.depth,
        num_attention_heads=enc.num_heads,
        intermediate_size=int(enc.embed_dim * mlp_ratio),
        decoder_hidden_size=ours.decoder_embed.out_features,
        decoder_num_hidden_layers=len(ours.decoder_blocks),
        decoder_num_attention_heads=dec0.attn.num_heads,
        decoder_intermediate_size=dec0.mlp.fc1.out_features,
        image_size=enc.img_size,
        patch_size=enc.patch_size,
        num_channels=ours.in_chans,
        mask_ratio=ours.mask_ratio,
        norm_pix_loss=ours.norm_pix_loss,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
        attn_implementation=attn_implementation,
    )
    theirs = ViTMAEForPreTraining(cfg)
    theirs.config._attn_implementation = attn_implementation
    theirs.load_state_dict(hf_state_from_ours(ours.state_dict()), strict=True)
    return theirs


def _block_to_hf(src: dict, ours: str, hf: str, out: dict) -> None:
    q, k, v = src[f"{ours}.attn.qkv.weight"].chunk(3)
    qb, kb, vb = src[f"{ours}.attn.qkv.bias"].chunk(3)
    out.update(
        {
            f"{hf}.attention.q_proj.weight": q,
            f"{hf}.attention.q_proj.bias": qb,
            f"{hf}.attention.k_proj.weight": k,
            f"{hf}.attention.k_proj.bias": kb,
            f"{hf}.attention.v_proj.weight": v,
            f"{hf}.attention.v_proj.bias": vb,
            f"{hf}.attention.o_proj.weight": src[f"{ours}.attn.proj.weight"],
            f"{hf}.attention.o_proj.bias": src[f"{ours}.attn.proj.bias"],
            f"{hf}.layernorm_before.weight": src[f"{ours}.norm1.weight"],
            f"{hf}.layernorm_before.bias": src[f"{ours}.norm1.bias"],
            f"{hf}.layernorm_after.weight": src[f"{ours}.norm2.weight"],
            f"{hf}.layernorm_after.bias": src[f"{ours}.norm2.bias"],
            f"{hf}.mlp.fc1.weight": src[f"{ours}.mlp.fc1.weight"],
            f"{hf}.mlp.fc1.bias": src[f"{ours}.mlp.fc1.bias"],
            f"{hf}.mlp.fc2.weight": src[f"{ours}.mlp.fc2.weight"],
            f"{hf}.mlp.fc2.bias": src[f"{ours}.mlp.fc2.bias"],
        }
    )


def hf_state_from_ours(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "vit.embeddings.cls_token": src["encoder.cls_token"],
        "vit.embeddings.position_embeddings": src["encoder.pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": src["encoder.patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": src["encoder.patch_embed.proj.bias"],
        "vit.layernorm.weight": src["encoder.norm.weight"],
        "vit.layernorm.bias": src["encoder.norm.bias"],
        "decoder.mask_token": src["mask_token"],
        "decoder.decoder_pos_embed": src["decoder_pos_embed"],
        "decoder.decoder_embed.weight": src["decoder_embed.weight"],
        "decoder.decoder_embed.bias": src["decoder_embed.bias"],
        "decoder.decoder_norm.weight": src["decoder_norm.weight"],
        "decoder.decoder_norm.bias": src["decoder_norm.bias"],
        "decoder.decoder_pred.weight": src["decoder_pred.weight"],
        "decoder.decoder_pred.bias": src["decoder_pred.bias"],
    }
    depth = 1 + max(int(k.split(".")[2]) for k in src if k.startswith("encoder.blocks."))
    for i in range(depth):
        _block_to_hf(src, f"encoder.blocks.{i}", f"vit.layers.{i}", out)
    dec_depth = 1 + max(int(k.split(".")[1]) for k in src if k.startswith("decoder_blocks."))
    for i in range(dec_depth):
        _block_to_hf(src, f"decoder_blocks.{i}", f"decoder.decoder_layers.{i}", out)
    return {k: v.clone() for k, v in out.items()}


def fmt_si(x: float, unit: str = "") -> str:
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def start(threads: int) -> dict:
    """Set the thread count, quiet the profiler, and measure the machine's fp32 matmul rate
    (the ceiling FLOP/s figures are read against)."""
    torch.set_num_threads(threads)
    quiet_profiler_logs()
    return matmul_rate()


def write_report(out: dict, json_path: str | Path | None) -> None:
    """Print a benchmark's results as one JSON line, and write them to `json_path` if given."""
    print(json.dumps(out))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
