"""`trainer.precision=bf16-mixed` on a CPU: accepted where the CPU has bf16 matmul units and
refused in one line where it has none; every stage trains under it close to fp32 and writes
fp32 checkpoints and exports.

The refusal tests inject the CPU's answer and run everywhere; the training tests need bf16
hardware and skip elsewhere."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import (
    DISTILL_TINY,
    MAE_TINY,
    SAM_TINY,
    SAMI_TINY,
    compose_train,
    tiny_sam,
    train_in_process,
)

from sam_train import cpu_precision
from sam_train.config_checks import ConfigError, check_config
from sam_train.cpu_precision import cpu_bf16_units, cpu_precision_problem, linux_cpu_flags
from sam_train.weights.safetensors_io import load_weights, save_weights

UNITS = cpu_bf16_units()
needs_bf16_units = pytest.mark.skipif(
    UNITS is None,
    reason="needs a CPU with bf16 matmul units (AMX, AVX512-BF16 or Arm BF16); this one has "
    "none, so bf16 training is refused here (the refusal is tested above)",
)


# ------------------------------------------------------------------------------------------
# the rule, with the CPU's answer injected (runs on every machine)
@pytest.mark.parametrize(
    "precision, units, fragments",
    [
        ("32-true", None, None),
        ("bf16-mixed", "AMX", None),
        ("bf16-mixed", "AVX512-BF16", None),
        ("bf16-mixed", None, ["without bf16 matmul units", "trainer.precision=32-true"]),
        ("bf16-true", "AVX512-BF16", ["checkpoints in bf16", "precision=bf16-mixed"]),
        ("16-mixed", "AVX512-BF16", ["fp16", "precision=bf16-mixed (this CPU has AVX512-BF16)"]),
        ("16-mixed", None, ["fp16", "precision=32-true (this CPU has no bf16 units)"]),
    ],
)
def test_which_precision_a_cpu_trains_in(precision, units, fragments):
    problem = cpu_precision_problem(precision, units)
    if fragments is None:
        assert problem is None
    else:
        assert problem.startswith(f"trainer.precision={precision} on a CPU")
        assert all(f in problem for f in fragments), problem


@pytest.mark.parametrize(
    "machine, flags, expected",
    [
        ("x86_64", "fpu sse avx2 avx512f avx512_bf16 avx512_vnni", "AVX512-BF16"),
        ("x86_64", "fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "AMX"),
        ("x86_64", "fpu sse sse2 avx avx2 fma avx512f avx512bw", None),
        ("aarch64", "fp asimd sve i8mm bf16", "Arm BF16"),
        ("aarch64", "fp asimd evtstrm aes crc32", None),
    ],
)
def test_bf16_units_read_from_linux_cpu_flags(tmp_path, monkeypatch, machine, flags, expected):
    key = "Features" if machine == "aarch64" else "flags"
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(cpu_precision, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(cpu_precision.platform, "machine", lambda: machine)
    assert linux_cpu_flags() == set(flags.split())
    assert cpu_bf16_units() == expected


@pytest.mark.parametrize("units", [None, "AVX512-BF16"])
def test_config_check_asks_the_cpu(tmp_path, monkeypatch, units):
    monkeypatch.setattr(cpu_precision, "cpu_bf16_units", lambda: units)
    cfg = compose_train(["stage=mae", *MAE_TINY, "trainer.precision=bf16-mixed"], tmp_path)
    if units is None:
        with pytest.raises(ConfigError, match="bf16-mixed on a CPU without bf16 matmul units"):
            check_config(cfg)
    else:
        check_config(cfg)  # accepted
    gpu = compose_train(["stage=mae", *MAE_TINY, "trainer=gpu"], tmp_path)
    monkeypatch.setattr(cpu_precision, "cpu_bf16_units", lambda: None)
    check_config(gpu)  # a GPU run does not ask the CPU


# ------------------------------------------------------------------------------------------
# training under bf16 autocast (needs bf16 hardware)
STEPS = 3


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return path


def stage_overrides(stage: str, teacher: Path) -> list[str]:
    return {
        "mae": ["stage=mae", *MAE_TINY, "trainer.max_epochs=1"],
        "sam": ["stage=sam", *SAM_TINY],
        "sami": [*SAMI_TINY, f"model.teacher={teacher}"],
        "distill": [*DISTILL_TINY, f"model.teacher={teacher}"],
    }[stage]


def train_losses(run_dir: Path, overrides: list[str]) -> list[float]:
    """Train a few steps in this process; the per-step training loss from metrics.csv."""
    train_in_process(
        [*overrides, f"trainer.max_steps={STEPS}", "validate_before_training=false"], run_dir
    )
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


@pytest.mark.slow
@needs_bf16_units
@pytest.mark.parametrize("stage", ["mae", "sam", "sami", "distill"])
def test_every_stage_trains_in_bf16_close_to_fp32_and_keeps_fp32_checkpoints(
    tmp_path, teacher, stage
):
    overrides = stage_overrides(stage, teacher)
    fp32 = train_losses(tmp_path / "fp32", overrides)
    bf16 = train_losses(tmp_path / "bf16", [*overrides, "trainer.precision=bf16-mixed"])
    assert len(fp32) == len(bf16) >= 2  # at most STEPS: the tiny configs' epochs are short
    assert bf16 != fp32, "the bf16 run computed exactly what fp32 did: autocast never ran"
    # Autocast keeps weights, optimizer state, norms, softmax and the losses in fp32 and rounds
    # only matmul and convolution inputs to bf16 (8-bit mantissa: at most 0.4% relative per
    # element, averaged down over each dot product); the tiny runs here differ by about 0.1%.
    # 1% leaves room for that rounding carried through a few Adam steps, and fails a run whose
    # bf16 run diverged or that computed more than matmul inputs in bf16.
    for step, (a, b) in enumerate(zip(fp32, bf16, strict=True)):
        assert abs(a - b) <= 0.01 * abs(a), f"step {step}: fp32 loss {a:.5f}, bf16 {b:.5f}"
    ckpt = torch.load(tmp_path / "bf16" / "checkpoints" / "last.ckpt", weights_only=True)
    floats = {k: v.dtype for k, v in ckpt["state_dict"].items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float32}
    exports = list((tmp_path / "bf16" / "export").glob("*.safetensors"))
    assert exports
    for path in exports:
        tensors, _ = load_weights(path)
        assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize("experiment", ["demo_mae", "demo_sam"])
def test_the_demo_trains_in_fp32_unless_asked(tmp_path, experiment):
    # bf16 is opt-in: a CPU that has the units still runs the demo exactly as before
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"


def test_without_proc_cpuinfo_x86_asks_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_precision, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(cpu_precision.platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_bf16_units() == "AVX512-BF16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert cpu_bf16_units() is None
