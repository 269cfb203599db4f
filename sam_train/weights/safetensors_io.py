"""Weights as safetensors with a JSON metadata block (architecture, sizes, training config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sam_train.files import atomic_path

METADATA_KEY = "sam_train"


def save_weights(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write `tensors` and `metadata` (JSON-serialisable) to `path` atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, default=str)})
    return Path(path)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and our metadata (empty when the file has none); clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"weights file {str(path)!r} is empty (an interrupted copy?)")
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"weights file {str(path)!r} is not a readable safetensors file: {err}"
        ) from err
    return tensors, json.loads(raw) if raw else {}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cast_floats(sd: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to `dtype` ("fp32", "fp16", "bf16"), the others as they are."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in sd.items()}
