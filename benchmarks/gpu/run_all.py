"""Every GPU figure in one command, for the few minutes a GPU is lent: `make bench-gpu`.

    python benchmarks/gpu/run_all.py [--out outputs/bench-gpu] [--preset full|tiny]
        [--peak-tflops N] [--device cuda|cpu]

Five parts, each checked against fp32 (or against the peer in fp32) before it is timed, then
timed in bf16 autocast against its peer in the same run, contenders alternating:
1. stage-1 step (MAE ViT-tiny and ViT-B, `bench_mae_gpu.py`'s batches) against transformers'
   ViTMAE: images/s, MFU, memory;
2. stage-2 step at sam_vit_b 1024 against segment-anything's modules: s/step, peak memory,
   the image encoder's MFU;
3. the decoder per prompt (prompt encoder + mask decoder + losses + backward) against
   segment-anything;
4. segment everything against `SamAutomaticMaskGenerator` (fp32, same masks required);
5. the exported ONNX decoder on onnxruntime's CUDA execution provider against eager torch,
   when the installed onnxruntime has that provider (`pip install onnxruntime-gpu`).
A part that fails is recorded with its error and the others still run. Writes
`<out>/gpu_bench.json` (every number, the machine, the GPU) and `<out>/gpu_bench.md` (one
table). Without a CUDA GPU it says so in one line and exits 0 (`--device cpu --preset tiny`
runs the same code in fp32 on tiny sizes: a check of the layout, not a figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

# fp32 against bf16 autocast on the same weights and inputs: relative error of a loss or an
# embedding above this means bf16 reached a part that must stay fp32
BF16_TOLERANCE = 0.02


@dataclass(frozen=True)
class Preset:
    mae_sizes: tuple[str, ...]
    mae_batch: int | None  # None: each size's own batch
    mae_img_size: int | None  # None: 224
    sam_model: str
    sam_size: int
    decoder_masks: int
    amg_model: str
    amg_image_size: int
    amg_points: int
    reps: int
    warmup: int


PRESETS = {
    "full": Preset(("tiny", "base"), None, None, "b", 1024, 64, "b", 1024, 32, 10, 3),
    "tiny": Preset(("tiny",), 2, 32, "tiny", 64, 2, "tiny", 64, 4, 1, 0),
}


@dataclass
class Row:
    """One line of the markdown table."""

    part: str
    figure: str
    ours: str
    peer: str
    ratio: str
    check: str


@dataclass
class Part:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(
        (value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)
    )


def check_text(error: float, tolerance: float = BF16_TOLERANCE) -> str:
    return f"{error:.1e} {'ok' if error <= tolerance else 'FAILED'}"


def low_name(dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def fmt_bytes(n: int | None) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "n/a"


def fmt_mfu(m: float | None) -> str:
    return f"{m:.1%}" if m is not None else "n/a"


# ------------------------------------------------------------------------------------------
# the parts
def stage1(preset: Preset, dev: torch.device, dtype, peak) -> Part:
    from benchmarks.bench_mae import SIZES, MaeSize, build_pair, same_function
    from benchmarks.common import interleaved, median
    from benchmarks.gpu.bench_mae_gpu import SIZES as GPU_SIZES
    from benchmarks.gpu.cuda_timing import peak_memory, synced

    part = Part("stage-1 step")
    cuda = dev.type == "cuda"
    for name in preset.mae_sizes:
        size = (GPU_SIZES if dev.type == "cuda" else SIZES)[name]  # GPU: batches that fill it
        if preset.mae_batch or preset.mae_img_size:
            size = MaeSize(
                **asdict(size)
                | {"batch": preset.mae_batch or size.batch}
                | {"img_size": preset.mae_img_size or size.img_size}
            )
        ours, theirs = build_pair(size)
        ours, theirs = ours.to(dev), theirs.to(dev)
        g = torch.Generator(device=dev).manual_seed(1)
        imgs = torch.randn(size.batch, 3, size.img_size, size.img_size, device=dev, generator=g)
        tokens = (size.img_size // size.patch_size) ** 2
        noise = torch.rand(size.batch, tokens, device=dev, generator=g)
        peer_diff = same_function(ours, theirs, imgs, noise)  # fp32: the same function
        with torch.no_grad(), autocast(dev, dtype):
            low = ours(imgs, noise=noise)[0]
        with torch.no_grad():
            bf16_error = relative_error(low, ours(imgs, noise=noise)[0])
        steps = mae_steps(ours, theirs, imgs, noise, dev, dtype)
        times = interleaved(
            {k: synced(s, cuda) for k, s in steps.items()}, preset.reps, preset.warmup
        )
        memory = {k: peak_memory(s, cuda) for k, s in steps.items()}
        flops = size.flops().train
        t = {k: median(v) for k, v in times.items()}
        mfu = {k: flops / t[k] / peak if peak else None for k in t}
        part.data[name] = {
            "batch": size.batch,
            "img_size": size.img_size,
            "s_per_step": t,
            "images_per_s": {k: size.batch / v for k, v in t.items()},
            "mfu": mfu,
            "peak_bytes": memory,
            "fp32_loss_abs_diff_vs_transformers": peer_diff,
            "bf16_loss_relative_error": bf16_error,
        }
        label = f"MAE ViT-{name} b{size.batch}"
        part.rows += [
            Row(
                part.name,
                f"{label} images/s",
                f"{size.batch / t['ours']:.1f}",
                f"{size.batch / t['peer']:.1f}",
                f"{t['peer'] / t['ours']:.2f}x",
                f"{low_name(dtype)} loss vs fp32 {check_text(bf16_error)}; fp32 vs peer {peer_diff:.1e}",
            ),
            Row(part.name, f"{label} MFU", fmt_mfu(mfu["ours"]), fmt_mfu(mfu["peer"]), "", ""),
            Row(
                part.name,
                f"{label} peak memory",
                fmt_bytes(memory["ours"]),
                fmt_bytes(memory["peer"]),
                f"{memory['ours'] / memory['peer']:.2f}x" if memory["peer"] else "",
                "",
            ),
        ]
    return part


def stage2(preset: Preset, dev: torch.device, dtype, peak) -> Part:
    from benchmarks.bench_sam import official_sam
    from benchmarks.gpu.bench_sam_gpu import step_vs_official
    from sam_train.models.sam.sam import build_sam_vit

    part = Part("stage-2 step")
    size = preset.sam_size
    torch.manual_seed(0)
    ours = build_sam_vit(preset.sam_model, image_size=size).eval()
    theirs = official_sam(ours).eval().to(dev)
    ours = ours.to(dev)
    images = torch.randn(1, 3, size, size, device=dev)
    with torch.no_grad():
        reference = ours.embed_images(images)
        peer_error = relative_error(theirs.image_encoder(images), reference)
        with autocast(dev, dtype):
            bf16_error = relative_error(ours.embed_images(images), reference)
    del ours, theirs
    r = step_vs_official(size, preset.reps, preset.warmup, dev, dtype, peak, preset.sam_model)
    r["fp32_embedding_relative_error_vs_segment_anything"] = peer_error
    r["bf16_embedding_relative_error"] = bf16_error
    part.data = r
    t, memory = r["s_per_step"], r["peak_bytes"]
    label = f"sam_vit_{preset.sam_model} {size}, 1 mask"
    part.rows += [
        Row(
            part.name,
            f"{label} s/step",
            f"{t['ours']:.3f}",
            f"{t['segment_anything']:.3f}",
            f"{r['speed_ratio_ours_over_theirs']:.2f}x",
            f"{low_name(dtype)} embedding vs fp32 {check_text(bf16_error)}; "
            f"fp32 vs peer {peer_error:.1e}",
        ),
        Row(
            part.name,
            f"{label} peak memory",
            fmt_bytes(memory["ours"]),
            fmt_bytes(memory["segment_anything"]),
            f"{r['memory_ratio_ours_over_theirs']:.2f}x"
            if r["memory_ratio_ours_over_theirs"]
            else "",
            "",
        ),
        Row(part.name, f"{label} encoder MFU", fmt_mfu(r["encoder_mfu_ours"]), "", "", ""),
    ]
    return part


def decoder(preset: Preset, dev: torch.device, dtype, peak) -> Part:
    from benchmarks.bench_sam import decoder_steps
    from benchmarks.common import interleaved, median
    from benchmarks.gpu.cuda_timing import synced

    part = Part("decoder per prompt")
    masks = preset.decoder_masks
    size = preset.sam_size
    fp32_steps, fp32_diff = decoder_steps(masks, str(dev), None, size)
    reference = fp32_steps["ours"]()
    del fp32_steps
    steps, diff = decoder_steps(masks, str(dev), dtype, size)
    bf16_error = relative_error(steps["ours"](), reference)
    cuda = dev.type == "cuda"
    times = interleaved({k: synced(s, cuda) for k, s in steps.items()}, preset.reps, preset.warmup)
    ms = {k: median(v) / masks * 1e3 for k, v in times.items()}
    part.data = {
        "masks": masks,
        "ms_per_prompt": ms,
        "fp32_max_abs_logit_diff_vs_segment_anything": fp32_diff,
        "max_abs_logit_diff_vs_segment_anything": diff,
        "bf16_logit_relative_error": bf16_error,
    }
    part.rows.append(
        Row(
            part.name,
            f"{masks} prompts on a {size} px embedding, ms/prompt (train step)",
            f"{ms['ours']:.3f}",
            f"{ms['segment_anything']:.3f}",
            f"{ms['segment_anything'] / ms['ours']:.2f}x",
            f"{low_name(dtype)} logits vs fp32 {check_text(bf16_error)}; "
            f"fp32 vs peer {fp32_diff:.1e}",
        )
    )
    return part


def segment_everything(preset: Preset, dev: torch.device, dtype, peak) -> Part:
    from benchmarks import bench_amg

    part = Part("segment everything")
    for permissive in (False, True):
        r = bench_amg.run(
            preset.amg_model,
            preset.amg_image_size,
            preset.amg_points,
            max(preset.reps // 3, 1),
            permissive,
            64,
            device=str(dev),
        )
        part.data["permissive" if permissive else "sam_thresholds"] = r
        iou = r.get("worst_best_match_iou")
        same = r["masks_ours"] == r["masks_theirs"] and (iou is None or iou > 0.99)
        split = "/".join(f"{v:.2f}" for v in r["split_ours_s"].values())
        part.rows.append(
            Row(
                part.name,
                f"sam_vit_{preset.amg_model} {preset.amg_image_size}, {preset.amg_points}^2 "
                f"points{', thresholds 0' if permissive else ''}: images/s (fp32)",
                f"{r['images_per_s_ours']:.2f}",
                f"{r['images_per_s_theirs']:.2f}",
                f"{r['ratio']:.2f}x",
                f"{r['masks_ours']} vs {r['masks_theirs']} masks, worst IoU "
                f"{iou if iou is not None else 'n/a'} {'ok' if same else 'FAILED'}; "
                f"ours enc/dec/filter {split} s",
            )
        )
    return part


def onnx_decoder(preset: Preset, dev: torch.device, dtype, peak) -> Part:
    part = Part("ONNX decoder")
    try:
        import onnxruntime as ort
    except ImportError:
        part.error = "onnxruntime is not installed (pip install onnxruntime-gpu)"
        return part
    provider = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        part.error = (
            f"onnxruntime {ort.__version__} has no {provider} "
            f"(has {', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu"
        )
        return part
    import numpy as np

    from benchmarks.bench_deploy import click_inputs
    from benchmarks.common import interleaved, median
    from benchmarks.gpu.cuda_timing import synced
    from sam_train.models.sam.sam import build_sam_vit
    from sam_train.weights.onnx_export import OnnxDecoder, export_decoder

    torch.manual_seed(0)
    sam = build_sam_vit(preset.sam_model, image_size=preset.sam_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_decoder(sam, Path(tmp) / "decoder.onnx")
        session = ort.InferenceSession(str(path), providers=[provider])
    feeds = click_inputs(sam)
    eager = OnnxDecoder(sam.to(dev)).eval()
    tensors = [torch.from_numpy(v).to(dev) for v in feeds.values()]
    with torch.no_grad():
        reference = [t.cpu().numpy() for t in eager(*tensors)]
    got = session.run(None, feeds)
    diff = float(max(np.abs(a - b).max() for a, b in zip(got, reference, strict=True)))

    def run_eager() -> None:
        with torch.no_grad():
            eager(*tensors)

    cuda = dev.type == "cuda"
    contenders = {"ort": lambda: session.run(None, feeds), "eager": synced(run_eager, cuda)}
    times = interleaved(contenders, max(preset.reps, 1) * 5, preset.warmup)
    ms = {k: median(v) * 1e3 for k, v in times.items()}
    part.data = {"provider": provider, "ms_per_click": ms, "max_abs_diff_vs_eager": diff}
    part.rows.append(
        Row(
            part.name,
            f"one click, ms ({provider}; peer: eager torch fp32)",
            f"{ms['ort']:.2f}",
            f"{ms['eager']:.2f}",
            f"{ms['eager'] / ms['ort']:.2f}x",
            f"max abs diff vs eager {diff:.1e} {'ok' if diff < 1e-2 else 'FAILED'}",
        )
    )
    return part


PARTS: dict[str, Callable[..., Part]] = {
    "stage1": stage1,
    "stage2": stage2,
    "decoder": decoder,
    "amg": segment_everything,
    "onnx": onnx_decoder,
}


# ------------------------------------------------------------------------------------------
# shared pieces
def autocast(dev: torch.device, dtype):
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def mae_steps(ours, theirs, imgs, noise, dev: torch.device, dtype) -> dict:
    """Training steps of our MAE and transformers' on the same images and masking noise."""
    return {
        "ours": train_step(ours, lambda: ours(imgs, noise=noise)[0], dev, dtype),
        "peer": train_step(theirs, lambda: theirs(pixel_values=imgs, noise=noise).loss, dev, dtype),
    }


def train_step(model, forward, dev: torch.device, dtype):
    """forward under autocast, backward, AdamW (fused on the GPU) at MAE's settings."""
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=1.5e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        fused=dev.type == "cuda",
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(dev, dtype):
            loss = forward()
        loss.backward()
        opt.step()

    return step


def markdown(result: dict) -> str:
    """One table of every part's rows, under a line naming the device and the precision."""
    lines = [
        f"# GPU benchmarks: {result['device']} ({result['precision']}, preset {result['preset']})",
        "",
        f"`python benchmarks/gpu/run_all.py` at {result['started']}; peer = transformers' "
        "ViTMAE (stage 1), segment-anything (stage 2, decoder, segment everything), eager "
        "torch (ONNX). Ratio = ours over the peer in speed (> 1: ours faster) or memory.",
        "",
        "| part | figure | ours | peer | ratio | check |",
        "|---|---|---|---|---|---|",
    ]
    for part in result["parts"]:
        for row in part["rows"]:
            cells = [row[k] for k in ("part", "figure", "ours", "peer", "ratio", "check")]
            lines.append(table_line(cells))
        if part["error"]:
            lines.append(table_line([part["name"], "not measured", "", "", "", part["error"]]))
    return "\n".join(lines) + "\n"


def table_line(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("outputs/bench-gpu"))
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--parts", default=",".join(PARTS), help=f"of {','.join(PARTS)}")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    a = p.parse_args(argv)
    unknown = set(a.parts.split(",")) - PARTS.keys()
    if unknown:
        p.error(f"--parts {','.join(sorted(unknown))}: pick from {','.join(PARTS)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
            "nothing measured. CPU figures: make bench",
            flush=True,
        )
        return 0

    from benchmarks.common import machine
    from benchmarks.gpu.cuda_timing import peak_bf16

    dev = torch.device(a.device)
    preset = PRESETS[a.preset]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name()
        dtype, peak = torch.bfloat16, peak_bf16(name, a.peak_tflops)
    else:
        name, dtype, peak = "cpu", None, None
    result = {
        "device": name,
        "precision": "bf16 autocast" if dtype else "fp32",
        "preset": a.preset,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "peak_bf16_flops": peak,
        "parts": [],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    for key in a.parts.split(","):
        t0 = time.perf_counter()
        try:
            part = PARTS[key](preset, dev, dtype, peak)
        except Exception as err:  # one failing part must not cost the others' figures
            part = Part(key, error=f"{type(err).__name__}: {err}".splitlines()[0][:300])
            traceback.print_exc()
        part.seconds = time.perf_counter() - t0
        result["parts"].append(asdict(part))
        for row in part.rows:
            print(
                f"{row.part} | {row.figure}: ours {row.ours}, peer {row.peer} {row.ratio} ({row.check})"
            )
        if part.error:
            print(f"{part.name}: not measured: {part.error}", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        # written after every part: a machine taken back mid-run still leaves what was measured
        write_atomically(a.out / "gpu_bench.json", json.dumps(result, indent=1))
        write_atomically(a.out / "gpu_bench.md", markdown(result))
    print(f"bench-gpu: {a.out / 'gpu_bench.md'} and gpu_bench.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
