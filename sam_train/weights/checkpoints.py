"""Reading any weights file a user hands in, safely, and telling which layout it holds.

Layouts:
  sam_train_mae   our MaskedAutoencoder state (`encoder.*`, `decoder_*`, `mask_token`)
  sam_train_sam   our Sam state (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`)
  sam_official    the official segment-anything checkpoint (same prefixes, official encoder names)
  tiny_vit_sam    a SAM on MobileSAM's TinyViT encoder (MobileSAM, LiteMedSAM, and our TinyViT
                  SAMs: `image_encoder.layers.N.*`; our TinyViT uses MobileSAM's names)
  mae_official    the official MAE checkpoint (`{"model": ...}`: encoder keys at the top level)
  vit             a bare ViT encoder in timm / our layout (`patch_embed.proj.*`, `blocks.N.*`)
A Hugging Face folder (SamModel / ViTMAE) is read into our layout (`sam_train.weights.hf`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
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


TINY_VIT_KEY = "image_encoder.layers.0.blocks.0.conv1.c.weight"  # MobileSAM's first MBConv
SAM_LAYOUTS = ("sam_train_sam", "sam_official", "tiny_vit_sam")


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if TINY_VIT_KEY in sd:
        return "tiny_vit_sam"
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


STAGE_OF_LAYOUT = {"sam_train_mae": "mae", "sam_train_sam": "sam", "tiny_vit_sam": "sam"}
PICKLE_PROTOCOL_BYTE = 0x80  # the first byte of a pickle written with protocol 2 or later


def _format_problem(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file, judged from its bytes, or None if it may be one.

    torch.save writes a zip archive (or, before torch 1.6, a bare pickle); anything else fails
    deep inside the unpickler with messages such as `KeyError: 101` or `pop from empty list`.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(n.endswith("data.pkl") for n in archive.namelist()):
                    return "is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
        except (zipfile.BadZipFile, OSError):
            return "is truncated or corrupt (its zip archive is incomplete: an interrupted save or copy?)"
        return None
    if head[:1] == bytes([PICKLE_PROTOCOL_BYTE]):
        return None
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "is a text file, not a checkpoint"
    return "is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"


def read_checkpoint_object(path: str | Path) -> Any:
    """The object a torch.save file holds, loaded with tensors only (no pickled code), with one
    readable `WeightsError` for a missing, empty, truncated, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {str(path)!r} is empty (an interrupted copy?)")
    problem = _format_problem(path)
    if problem:
        raise WeightsError(f"{str(path)!r} {problem}")
    zipped = zipfile.is_zipfile(path)  # mmap (tensors read when used) needs the zip format
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        # torch's own message advises weights_only=False, i.e. running code from the file
        raise WeightsError(
            f"{str(path)!r} holds Python objects besides tensors, which sam_train does not "
            "unpickle (they can run code); save its state_dict (tensors only) and use that"
        ) from err
    except Exception as err:  # torch raises many types for damaged archives
        first = (str(err).splitlines() or [""])[0][:160]
        raise WeightsError(
            f"{str(path)!r} is a damaged PyTorch checkpoint ({type(err).__name__}: {first})"
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
    if path.suffix == ".safetensors" or _is_safetensors(path):
        try:
            sd, metadata = load_weights(path)
        except ValueError as err:
            raise WeightsError(str(err)) from err
    else:
        obj = read_checkpoint_object(path)
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
            metadata = _sidecar_metadata(path)
    sd = {k: v for k, v in sd.items() if torch.is_tensor(v)}
    if not sd:
        raise WeightsError(f"{str(path)!r} contains no tensors")
    layout = detect_layout(sd)
    if layout == "unknown":
        raise WeightsError(
            f"{str(path)!r} is not a ViT, MAE or SAM checkpoint sam_train reads (expected a SAM "
            "in the official segment-anything, MobileSAM / LiteMedSAM or sam_train layout, an "
            f"MAE, or a ViT encoder; first keys: {list(sd)[:3]})"
        )
    return LoadedWeights(sd, layout, metadata, path)


def _sidecar_metadata(path: Path) -> dict[str, Any]:
    """The `.json` that `sam-export` writes beside a plain state dict (the official SAM layout has
    no room for metadata), when it records an architecture; {} otherwise."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) and isinstance(meta.get("architecture"), dict) else {}


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
    if layout == "tiny_vit_sam":
        raise WeightsError(
            f"{weights.path} holds a TinyViT (MobileSAM-family) SAM, whose encoder is not a ViT: "
            "use it as a whole SAM (model=lite_medsam or model=mobile_sam)"
        )
    raise WeightsError(f"no encoder in a {layout} checkpoint")


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and then a JSON '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def lightning_checkpoint_stage(path: str | Path) -> str | None:
    """The stage of a sam-train Lightning checkpoint (a registered stage's name, from what it
    says, else 'mae' or 'sam' from its keys), None for one of another kind; `WeightsError` for
    an unreadable file."""
    obj = read_checkpoint_object(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        return None
    from sam_train.lit.base import registered_stages

    stage = (obj.get("sam_train") or {}).get("stage")
    if stage in registered_stages():
        return stage
    sd = {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}
    return STAGE_OF_LAYOUT.get(detect_layout(sd))
