"""`sam-export`: weights from a training checkpoint in the layouts other tools load as they are.

Formats:
  encoder      the ViT encoder, our layout (= timm names), safetensors + metadata
  timm         the encoder for timm's VisionTransformer (MAE encoders) as safetensors + metadata
  mae          the whole MAE in the official MAE layout: a .pth holding {"model": state_dict}
  safetensors  the whole model in our layout, safetensors + metadata
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam_train.files import atomic_path
from sam_train.weights.checkpoints import LoadedWeights, WeightsError, file_sha256, read_weights
from sam_train.weights.keymaps import encoder_state, mae_to_official
from sam_train.weights.safetensors_io import save_weights

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cast(sd: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in sd.items()}


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


def _export_encoder(weights: LoadedWeights, out: Path, dtype: str, fmt: str) -> Path:
    meta = _metadata(weights, fmt, dtype)
    return save_weights(out, _cast(encoder_state(weights), dtype), meta)


def _export_mae(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    if weights.layout not in ("sam_train_mae", "mae_official"):
        raise WeightsError(f"--format mae needs a stage-1 (MAE) checkpoint, {weights.path} is {weights.layout}")
    sd = weights.state_dict if weights.layout == "mae_official" else mae_to_official(weights.state_dict)
    with atomic_path(out) as tmp:
        torch.save({"model": _cast(sd, dtype), "sam_train": _metadata(weights, "mae", dtype)}, tmp)
    return out


def _export_full(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    return save_weights(out, _cast(weights.state_dict, dtype), _metadata(weights, "safetensors", dtype))


EXPORTERS: dict[str, Callable[[LoadedWeights, Path, str], Path]] = {
    "encoder": lambda w, o, d: _export_encoder(w, o, d, "encoder"),
    "timm": lambda w, o, d: _export_encoder(w, o, d, "timm"),
    "mae": _export_mae,
    "safetensors": _export_full,
}
SUFFIX = {"mae": ".pth", "sam": ".pth"}


def default_out(ckpt: Path, fmt: str) -> Path:
    return ckpt.with_name(f"{ckpt.stem}.{fmt}{SUFFIX.get(fmt, '.safetensors')}")


def export(ckpt: str | Path, fmt: str, out: str | Path | None = None, dtype: str = "fp32") -> Path:
    """Write `ckpt` in format `fmt` to `out` (atomically); returns the written path."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(EXPORTERS)}")
    weights = read_weights(ckpt)
    out = Path(out) if out else default_out(Path(ckpt), fmt)
    return EXPORTERS[fmt](weights, out, dtype)
