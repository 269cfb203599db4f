"""`sam-export`: weights from a training checkpoint in the layouts other tools load as they are.

Formats:
  encoder      the ViT encoder, our layout (= timm names), safetensors + metadata
  timm         the encoder for timm: `VisionTransformer` (MAE encoders) or `VisionTransformerSAM`
               (SAM encoders: positional table as a [1, H, W, D] grid), safetensors + metadata
  mae          the whole MAE in the official MAE layout: a .pth holding {"model": state_dict}
  sam          the whole SAM in the official segment-anything layout: a .pth state dict that
               `segment_anything`'s builders load as it is, metadata in a sidecar .json
  safetensors  the whole model in our layout, safetensors + metadata
  adapter      a LoRA fine-tune's own tensors, with its base checkpoint's path and sha256
               (`sam_train.weights.adapters`); every other format folds the adapters in
  onnx         a folder: encoder.onnx + decoder.onnx (segment-anything's decoder interface)
               + preprocess.json (sam_train.weights.onnx_export), and anylabeling/ + osam/ for
               annotation tools (sam_train.weights.onnx_tools)
  hf           a folder Hugging Face transformers loads: SamModel (SAM) or ViTMAEForPreTraining
               (MAE) (sam_train.weights.hf)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam_train.errors import UsageError
from sam_train.files import atomic_path
from sam_train.weights.adapters import export_adapter, without_adapters
from sam_train.weights.checkpoints import (
    SAM_LAYOUTS,
    LoadedWeights,
    WeightsError,
    encoder_state,
    file_sha256,
    read_weights,
)
from sam_train.weights.keymaps import mae_to_official
from sam_train.weights.safetensors_io import cast_floats, save_weights


def _metadata(weights: LoadedWeights, fmt: str, dtype: str) -> dict[str, Any]:
    meta = dict(weights.metadata)
    config = meta.get("config") or {}
    meta.setdefault("architecture", _architecture_from_config(config))
    meta.update(
        format=fmt,
        dtype=dtype,
        source=str(weights.path),
        source_sha256=file_sha256(weights.path) if weights.path else None,
        source_layout=weights.layout,
    )
    return meta


def _architecture_from_config(config: dict) -> dict | None:
    model = dict(config.get("model") or {})
    return {k: v for k, v in model.items() if not k.startswith("_")} or None


def refuse_neck_upsample(weights: LoadedWeights, fmt: str) -> None:
    """A ViT SAM with `neck_upsample` > 1 has layers the official SAM, transformers' SamModel
    and timm's SAM encoder do not have: refuse those formats in one line."""
    if any(k.startswith("image_encoder.upsample.") for k in weights.state_dict):
        raise WeightsError(
            f"--format {fmt}: {weights.path} has an upsampling neck (model.neck_upsample > 1), "
            "a layer that format has no place for; use --format safetensors, onnx or encoder"
        )


def _export_encoder(weights: LoadedWeights, out: Path, dtype: str, fmt: str) -> Path:
    if fmt == "timm":
        refuse_neck_upsample(weights, fmt)
    meta = _metadata(weights, fmt, dtype)
    sd = encoder_state(weights)
    if fmt == "timm" and weights.layout in SAM_LAYOUTS:
        grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
        sd["pos_embed"] = sd["pos_embed"].reshape(1, grid, grid, -1)  # timm's SAM encoder layout
    return save_weights(out, cast_floats(sd, dtype), meta)


def _export_sam(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    from sam_train.weights.keymaps import sam_state_to_official
    from sam_train.weights.sam_loading import sam_architecture

    if weights.layout not in SAM_LAYOUTS:
        raise WeightsError(
            f"--format sam needs a stage-2 (SAM) checkpoint, {weights.path} is {weights.layout}"
        )
    refuse_neck_upsample(weights, "sam")
    ours = weights.state_dict
    if weights.layout == "sam_official":
        from sam_train.weights.keymaps import sam_state_from_official

        ours = sam_state_from_official(ours)
    meta = _metadata(weights, "sam", dtype)
    # shapes give all but the decoder's head count; a checkpoint's own record wins
    meta["architecture"] = sam_architecture(ours, weights.metadata)
    # a TinyViT SAM's names are MobileSAM's already: its official layout is ours
    official = ours if weights.layout == "tiny_vit_sam" else sam_state_to_official(ours)
    with atomic_path(out) as tmp:
        torch.save(cast_floats(official, dtype), tmp)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    return out


def _export_mae(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    if weights.layout not in ("sam_train_mae", "mae_official"):
        raise WeightsError(
            f"--format mae needs a stage-1 (MAE) checkpoint, {weights.path} is {weights.layout}"
        )
    sd = (
        weights.state_dict
        if weights.layout == "mae_official"
        else mae_to_official(weights.state_dict)
    )
    with atomic_path(out) as tmp:
        torch.save(
            {"model": cast_floats(sd, dtype), "sam_train": _metadata(weights, "mae", dtype)}, tmp
        )
    return out


def _export_full(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    return save_weights(
        out, cast_floats(weights.state_dict, dtype), _metadata(weights, "safetensors", dtype)
    )


EXPORTERS: dict[str, Callable[[LoadedWeights, Path, str], Path]] = {
    "encoder": lambda w, o, d: _export_encoder(w, o, d, "encoder"),
    "timm": lambda w, o, d: _export_encoder(w, o, d, "timm"),
    "mae": _export_mae,
    "sam": _export_sam,
    "safetensors": _export_full,
    "adapter": export_adapter,
}
SUFFIX = {"mae": ".pth", "sam": ".pth"}


def _register_folder_formats() -> None:
    """Formats whose exporters import optional packages (onnx, transformers) only when run."""

    def onnx(w: LoadedWeights, o: Path, d: str, quantize: bool = False) -> Path:
        from sam_train.weights.onnx_folder import export_onnx_weights

        return export_onnx_weights(w, o, d, quantize=quantize)

    def hf(w: LoadedWeights, o: Path, d: str) -> Path:
        from sam_train.weights.hf_export import export_hf_weights

        refuse_neck_upsample(w, "hf")
        return export_hf_weights(w, o, d)

    EXPORTERS.update(onnx=onnx, hf=hf)
    SUFFIX.update(onnx="", hf="")


_register_folder_formats()


def default_out(ckpt: Path, fmt: str) -> Path:
    return ckpt.with_name(f"{ckpt.stem}.{fmt}{SUFFIX.get(fmt, '.safetensors')}")


def export(
    ckpt: str | Path,
    fmt: str,
    out: str | Path | None = None,
    dtype: str = "fp32",
    quantize: bool = False,
) -> Path:
    """Write `ckpt` in format `fmt` to `out` (atomically); returns the written path.
    `quantize`: also write an int8 decoder (onnx only)."""
    if fmt not in EXPORTERS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {sorted(EXPORTERS)}")
    if quantize and fmt != "onnx":
        raise UsageError(f"--quantize applies to --format onnx, not {fmt}")
    weights = read_weights(ckpt)
    if fmt != "adapter":
        weights = without_adapters(weights)  # LoRA folded in: every format loads as a plain model
    out = Path(out) if out else default_out(Path(ckpt), fmt)
    options = {"quantize": True} if quantize else {}
    return EXPORTERS[fmt](weights, out, dtype, **options)
