"""Timing, peak memory and peak FLOP rates shared by the GPU benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch

# dense bf16 tensor-core peak, TFLOP/s (no sparsity), by a substring of the device name
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def peak_bf16(name: str, override: float | None) -> float | None:
    """FLOP/s of the named GPU's dense bf16 peak (`override` in TFLOP/s wins); None if unknown."""
    if override:
        return override * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def synced(step: Callable[[], object], sync: bool = True) -> Callable[[], None]:
    """`step` with the GPU synchronised before and after, so `common.interleaved`'s wall-clock
    timing covers the kernels it queued (plain `step` when not `sync`, e.g. on the CPU)."""
    if not sync:
        return step

    def run() -> None:
        torch.cuda.synchronize()
        step()
        torch.cuda.synchronize()

    return run


def peak_memory(step: Callable[[], object], cuda: bool = True) -> int:
    """`torch.cuda.max_memory_allocated` over one call (0 off the GPU)."""
    if not cuda:
        step()
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()
