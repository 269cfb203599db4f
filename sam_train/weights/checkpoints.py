"""Reading any weights file a user hands in, safely, and telling which layout it holds.

Layouts:
  sam_train_mae   our MaskedAutoencoder state (`encoder.*`, `decoder_*`, `mask_token`)
  sam_train_sam   our Sam state (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`)
  sam_official    the official segment-anything checkpoint (same prefixes, official encoder names)
  mae_official    the official MAE checkpoint (`{"model": ...}`: encoder keys at the top level)
  vit             a bare ViT encoder in timm / our layout (`patch_embed.proj.*`, `blocks.N.*`)
A Hugging Face folder (SamModel / ViTMAE) is read into our layout (`sam_train.weights.hf`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from sam_train.weights.keymaps import MAE_DECODER_PREFIXES, sam_encoder_state_from_official
from sam_train.weights.loaded import LoadedWeights, WeightsError
from sam_train.weights.safetensors_io import load_weights


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """sha256 of a file, or of a weights folder's .safetensors files in name order."""
    h = hashlib.sha256()
    path = Path(path)
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith("image_encoder.") for k in keys):
        ours = any(".mlp.fc1." in k for k in keys if k.startswith("image_encoder."))
        return "sam_train_sam" if ours else "sam_official"
    if any(k.startswith("encoder.blocks.") for k in keys):
        return "sam_train_mae"
    if any(k.startswith("decoder_") for k in keys) or "mask_token" in keys:
        return "mae_official"
    if any(k.startswith("blocks.") for k in keys) and "patch_embed.proj.weight" in keys:
        return "vit"
    return "unknown"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise WeightsError(
            f"{str(path)!r} is not a loadable PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); expected a Lightning .ckpt, a .pth state dict "
            "or a .safetensors file"
        ) from err


def read_weights(path: str | Path) -> LoadedWeights:
    """Load a checkpoint or weights file (tensors only, no pickled code) and detect its layout."""
    path = Path(path)
    if path.is_dir():  # a Hugging Face transformers folder (SamModel / ViTMAE)
        from sam_train.weights.hf import is_hf_folder, read_hf_folder

        if is_hf_folder(path):
            return read_hf_folder(path)
        raise WeightsError(f"{str(path)!r} is a folder without a transformers config.json")
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {str(path)!r} is empty (an interrupted copy?)")
    metadata: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        try:
            sd, metadata = load_weights(path)
        except ValueError as err:
            raise WeightsError(str(err)) from err
    else:
        obj = _torch_load(path)
        if not isinstance(obj, dict):
            raise WeightsError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # Lightning
            metadata = dict(obj.get("sam_train") or {})
            metadata["global_step"] = obj.get("global_step")
            sd = {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}
        elif "model" in obj and isinstance(obj["model"], dict):  # official MAE / DeiT style
            sd = obj["model"]
        else:
            sd = obj
    sd = {k: v for k, v in sd.items() if torch.is_tensor(v)}
    if not sd:
        raise WeightsError(f"{str(path)!r} contains no tensors")
    layout = detect_layout(sd)
    if layout == "unknown":
        raise WeightsError(
            f"{str(path)!r} is not a ViT, MAE or SAM checkpoint (first keys: {list(sd)[:5]})"
        )
    return LoadedWeights(sd, layout, metadata, path)


def encoder_state(weights: LoadedWeights) -> dict[str, torch.Tensor]:
    """The ViT encoder of any supported layout, in our (= timm) ViT layout."""
    sd, layout = weights.state_dict, weights.layout
    if layout == "sam_train_mae":
        return {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    if layout == "mae_official":
        return {k: v for k, v in sd.items() if not k.startswith(MAE_DECODER_PREFIXES)}
    if layout == "vit":
        return {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    if layout in ("sam_train_sam", "sam_official"):
        enc = {
            k.removeprefix("image_encoder."): v
            for k, v in sd.items()
            if k.startswith("image_encoder.")
        }
        return enc if layout == "sam_train_sam" else sam_encoder_state_from_official(enc)
    raise WeightsError(f"no encoder in a {layout} checkpoint")
