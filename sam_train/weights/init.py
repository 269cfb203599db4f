"""Initialising a SAM from a checkpoint: a stage-1 MAE, an exported encoder, timm or official
MAE weights (encoder only), or a whole SAM (ours or the official layout).

Every key is accounted for in an `InitReport` (loaded, resized, new, ignored); a checkpoint of
another width or depth is refused with a message that says which model size it fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.models.lora import merge_lora_state
from sam_train.models.pos_embed import resize_grid_embed
from sam_train.weights.checkpoints import WeightsError, encoder_state, read_weights


@dataclass
class InitReport:
    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")

        return (
            f"init from {self.source} ({self.layout}): {len(self.loaded)} tensors loaded"
            f" ({len(self.resized)} resized: {short(self.resized)}); "
            f"{len(self.new)} new (kept at init: {short(self.new)}); "
            f"{len(self.ignored)} ignored ({short(self.ignored)})"
        )


def vit_depth(keys, prefix: str = "") -> int:
    ids = {
        int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))
    }
    return max(ids) + 1 if ids else 0


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear")
    return resized[0].t().to(table.dtype)


def _fit(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """`value` reshaped/resized to `target`'s shape where that is meaningful, else None."""
    if value.shape == target.shape:
        return value
    if key.endswith("pos_embed") and value.shape[-1] == target.shape[-1]:
        side = int(round((target.shape[1]) ** 0.5))
        prefix = value.shape[1] - int(round(value.shape[1] ** 0.5)) ** 2  # a class-token slot
        return resize_grid_embed(value[:, prefix:], (side, side))
    if re.search(r"rel_pos_[hw]$", key) and value.shape[1] == target.shape[1]:
        return _resize_rel_pos(value, target.shape[0])
    return None


def load_matching(
    module: nn.Module, source: dict[str, torch.Tensor], report: InitReport, prefix: str = ""
) -> None:
    """Copy every source tensor whose name exists in `module`, fitting positional tables;
    refuse shape conflicts elsewhere (another width)."""
    target = module.state_dict()
    conflicts = []
    with torch.no_grad():
        for key, value in source.items():
            if key not in target:
                report.ignored.append(prefix + key)
                continue
            fitted = _fit(key, value, target[key])
            if fitted is None:
                conflicts.append(
                    f"{prefix}{key}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}"
                )
                continue
            target[key].copy_(fitted)
            report.loaded.append(prefix + key)
            if fitted is not value:
                report.resized.append(prefix + key)
    if conflicts:
        raise WeightsError(
            f"{report.source} does not fit this model (another width?):\n  "
            + "\n  ".join(conflicts[:8])
            + "\nPick the model size the checkpoint was trained with (e.g. model=sam_vit_b for a ViT-B)."
        )
    report.new.extend(prefix + k for k in target if prefix + k not in report.loaded)


def init_sam_from(sam: nn.Module, path: str | Path) -> InitReport:
    """Load what `path` holds into `sam` (a `Sam`); returns the report. Raises WeightsError."""
    from sam_train.weights.keymaps import sam_state_from_official

    weights = read_weights(path)
    report = InitReport(str(path), weights.layout)
    tiny_model = sam.architecture.get("encoder") == "tiny_vit"
    if tiny_model != (weights.layout == "tiny_vit_sam"):
        raise WeightsError(
            f"{path} is a {'TinyViT (MobileSAM-family) SAM' if not tiny_model else weights.layout} "
            f"checkpoint and the model a {'TinyViT' if tiny_model else 'ViT'} SAM: pick "
            + (
                "a ViT model (model=sam_vit_b, ...)"
                if tiny_model
                else "model=lite_medsam or model=mobile_sam"
            )
        )
    if tiny_model:
        load_matching(sam, merge_lora_state(weights.state_dict), report)
        return report
    if weights.layout in ("sam_official", "sam_train_sam"):
        sd = weights.state_dict
        if weights.layout == "sam_official":
            sd = sam_state_from_official(sd)
        sd = merge_lora_state(sd)  # a LoRA fine-tune starts the next run as plain weights
        _check_depth(vit_depth(sd, "image_encoder."), sam.image_encoder.depth, report)
        load_matching(sam, sd, report)
        return report
    enc = encoder_state(weights)
    enc.pop("cls_token", None)  # SAM's encoder has no class token
    _check_depth(vit_depth(enc), sam.image_encoder.depth, report)
    load_matching(sam.image_encoder, enc, report, prefix="image_encoder.")
    report.new.extend(k for k in sam.state_dict() if not k.startswith("image_encoder."))
    return report


def _check_depth(source_depth: int, model_depth: int, report: InitReport) -> None:
    if source_depth != model_depth:
        raise WeightsError(
            f"{report.source} has an encoder of depth {source_depth}, the model {model_depth}; "
            "pick the matching size (ViT-B 12 blocks, ViT-L 24, ViT-H 32) or set "
            f"model.encoder_depth={source_depth}"
        )


def init_mae_from(mae: nn.Module, path: str | Path) -> InitReport:
    """Load what `path` holds into `mae` (a `MaskedAutoencoder`) to continue pretraining:
    the encoder from any layout (official MAE, timm, our exports, a SAM's image encoder: its
    plain ViT blocks), the decoder too when `path` is an MAE. Positional tables stay the MAE's
    fixed sin-cos ones (reported ignored); a SAM's relative-position tables and neck have no
    place in a plain ViT (ignored); what the source lacks (a class token, the final norm) is new."""
    from sam_train.weights.keymaps import MAE_DECODER_PREFIXES

    weights = read_weights(path)
    report = InitReport(str(path), weights.layout)
    enc = encoder_state(weights)
    sd = weights.state_dict
    if weights.layout == "sam_train_mae":
        decoder = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    elif weights.layout == "mae_official":
        decoder = {k: v for k, v in sd.items() if k.startswith(MAE_DECODER_PREFIXES)}
    else:
        decoder = {}
    if enc.pop("pos_embed", None) is not None:
        report.ignored.append("encoder.pos_embed")
    if decoder.pop("decoder_pos_embed", None) is not None:
        report.ignored.append("decoder_pos_embed")
    _check_depth(vit_depth(enc), mae.encoder.depth, report)
    load_matching(mae.encoder, enc, report, prefix="encoder.")
    if decoder:
        load_matching(mae, decoder, report)
    report.new = [k for k in mae.state_dict() if k not in set(report.loaded)]
    return report
