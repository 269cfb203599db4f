"""Which reduced precisions a CPU can train in at a useful speed.

bf16 autocast on a CPU pays only where the CPU multiplies bf16 in hardware (Intel AMX, the
AVX512-BF16 dot-product instructions of recent Intel and AMD server parts, Arm's BF16
extension); elsewhere the matmuls are emulated and run slower than fp32. The answer is read
from the CPU's feature flags, not from a timed probe: flags are instant, give the same answer
on a busy shared machine as on an idle one, and a test can inject them.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matmul units ("AMX", "AVX512-BF16", "Arm BF16"), or None without any."""
    machine = platform.machine().lower()
    flags = linux_cpu_flags()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if not flags:  # not Linux: torch's cpuinfo query (imported late: config checks are fast)
            import torch

            def has(query: str) -> bool:  # private queries: absent from some torch builds
                return bool(getattr(torch.cpu, query, lambda: False)())

            if has("_is_amx_tile_supported"):
                return "AMX"
            return "AVX512-BF16" if has("_is_avx512_bf16_supported") else None
        if "amx_bf16" in flags:
            return "AMX"
        return "AVX512-BF16" if "avx512_bf16" in flags else None
    if machine in ("aarch64", "arm64"):
        return "Arm BF16" if "bf16" in flags else None
    return None


def linux_cpu_flags() -> set[str]:
    """The feature words of /proc/cpuinfo ("flags" on x86, "Features" on Arm); empty elsewhere."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_precision_problem(precision: str, bf16_units: str | None) -> str | None:
    """Why `trainer.precision=<precision>` cannot train on this CPU, or None when it can.

    fp32 always can; `bf16-mixed` (fp32 weights and optimizer, bf16 matmuls under autocast)
    can where `bf16_units` names the CPU's bf16 hardware; fp16 and pure bf16 cannot (fp16 has
    no fast CPU kernels; `bf16-true` would keep the weights, and so the checkpoints, in bf16)."""
    if "16" not in precision:
        return None
    if precision in ("bf16-mixed", "bf16"):
        if bf16_units:
            return None
        return (
            f"trainer.precision={precision} on a CPU without bf16 matmul units (no AMX, "
            "AVX512-BF16 or Arm BF16 found): bf16 matmuls would be emulated, slower than "
            "fp32; use trainer.precision=32-true, or trainer=gpu"
        )
    fix = (
        f"use trainer.precision=bf16-mixed (this CPU has {bf16_units})"
        if bf16_units
        else "use trainer.precision=32-true (this CPU has no bf16 units)"
    )
    if precision.startswith("bf16"):
        return f"trainer.precision={precision} on a CPU would keep weights and checkpoints in bf16; {fix}"
    return f"trainer.precision={precision} on a CPU: fp16 has no fast CPU kernels; {fix}"
