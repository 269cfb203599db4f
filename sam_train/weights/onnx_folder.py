"""`sam-export --format onnx`: the whole export folder.

encoder.onnx / decoder.onnx (+ decoder_quantized.onnx) with segment-anything's interface
(sam_train.weights.onnx_export), preprocess.json, and the annotation tools' folders
anylabeling/ and osam/ (sam_train.weights.onnx_tools), written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sam_train.files import atomic_dir
from sam_train.models.sam.sam import Sam
from sam_train.weights.checkpoints import LoadedWeights, WeightsError
from sam_train.weights.export_folder import check_output_folder
from sam_train.weights.onnx_export import (
    export_decoder,
    export_encoder,
    preprocessing,
    quantize_decoder,
)
from sam_train.weights.onnx_tools import export_tool_folders, tool_model_name


def export_onnx(sam: Sam, out: Path, quantize: bool = False, metadata: dict | None = None) -> Path:
    """Write encoder.onnx, decoder.onnx (+ decoder_quantized.onnx), preprocess.json and the
    annotation tools' folders anylabeling/ and osam/."""
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise WeightsError(
            "--format onnx needs the onnx extra: pip install 'sam_train[onnx]'"
        ) from err
    check_output_folder(out, "encoder.onnx", "onnx")
    sam = sam.eval()
    with atomic_dir(out) as tmp, torch.no_grad():
        export_encoder(sam, tmp / "encoder.onnx")
        export_decoder(sam, tmp / "decoder.onnx")
        if quantize:
            quantize_decoder(tmp / "decoder.onnx", tmp / "decoder_quantized.onnx")
        source = str((metadata or {}).get("source", ""))
        export_tool_folders(sam, tmp, tool_model_name(source))
        info = {**preprocessing(sam), "source": metadata or {}}
        (tmp / "preprocess.json").write_text(json.dumps(info, indent=2, default=str))
    return out


def export_onnx_weights(
    weights: LoadedWeights, out: Path, dtype: str, quantize: bool = False
) -> Path:
    """EXPORTERS entry: a SAM checkpoint -> the ONNX folder (fp32 graphs only)."""
    from sam_train.weights.sam_loading import load_sam

    if dtype != "fp32":
        raise WeightsError("--format onnx writes fp32 graphs (use --quantize for int8 weights)")
    sam = load_sam(weights.path)
    meta = {
        "source": str(weights.path),
        "source_layout": weights.layout,
        "architecture": sam.architecture,
    }
    return export_onnx(sam, out, quantize=quantize, metadata=meta)
