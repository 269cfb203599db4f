"""What the preprocessing inside anylabeling/encoder.onnx costs per image.

The annotation tools' encoder (sam_train.weights.onnx_tools.ToolEncoder) resizes, normalises
and pads the tool's 684 x 1024 picture in the graph; encoder.onnx gets that work done by the
caller. Both graphs of one tiny SAM run alternately in onnxruntime on one thread: the
difference of their medians is the preprocessing's cost (the tiny encoder itself is the same).

    python benchmarks/bench_tool_encoder.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import interleaved, load_average, machine, median, spread
from sam_train.models.sam import build_sam
from sam_train.weights.onnx_export import export_encoder
from sam_train.weights.onnx_tools import export_tool_encoder

CANVAS = (684, 1024)  # AnyLabeling's frame


def tiny_sam(size: int):
    return build_sam(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=size,
        window_size=4,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=32,
    ).eval()


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench(size: int, folder: Path, canvas: np.ndarray) -> str:
    """Both encoders of a tiny `size`-px SAM, timed alternately; one line of medians."""
    sam = tiny_sam(size)
    with torch.no_grad():
        plain = session(export_encoder(sam, folder / f"plain{size}.onnx"))
        tool = session(export_tool_encoder(sam, folder / f"tool{size}.onnx"))
    images = np.zeros((1, 3, size, size), np.float32)
    times = interleaved(
        {
            "encoder.onnx": lambda: plain.run(None, {"images": images}),
            "anylabeling/encoder.onnx": lambda: tool.run(None, {"input_image": canvas}),
        },
        reps=7,
        warmup=1,
    )
    line = ", ".join(
        f"{name} {median(t) * 1e3:.0f} ms (spread {spread(t):.0%})" for name, t in times.items()
    )
    extra = median(times["anylabeling/encoder.onnx"]) - median(times["encoder.onnx"])
    return f"S={size}: {line}; preprocessing {extra * 1e3:.0f} ms"


def main() -> None:
    torch.set_num_threads(1)
    print(machine(), f"load average {load_average()}")
    canvas = np.random.default_rng(0).integers(0, 256, (*CANVAS, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for size in (256, 1024):
            print(bench(size, Path(tmp), canvas))


if __name__ == "__main__":
    main()
