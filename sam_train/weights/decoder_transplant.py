"""Giving a SAM another SAM's prompt encoder and mask decoder.

A released SAM's decoder already knows how to turn prompts into masks; an encoder trained
elsewhere (stage 1, SAMI, a random probe) can be paired with it instead of training a decoder
from scratch. The decoder reads image embeddings through the donor encoder's last LayerNorm2d
(its neck's): the embedding is that norm's per-channel affine of a unit-variance map, so a
fresh encoder whose norm starts at the identity hands the decoder embeddings of the wrong
scale and offset. Copying that affine with the decoder (when the receiving encoder has not
learned its own) puts the new encoder at the donor's channel means and scales from step 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sam_train.models.sam.common import LayerNorm2d
from sam_train.models.sam.sam import Sam
from sam_train.weights.checkpoints import WeightsError

# build_sam arguments of the parts a transplant copies (they must be the donor's)
DECODER_ARGS = (
    "prompt_embed_dim",
    "mask_in_chans",
    "text_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "decoder_mlp_dim",
    "iou_head_hidden_dim",
)
DECODER_PARTS = ("prompt_encoder", "mask_decoder")


def output_norm_name(encoder: nn.Module) -> str | None:
    """Module name of an image encoder's last LayerNorm2d (its neck's, or its upsampling's)."""
    names = [n for n, m in encoder.named_modules() if isinstance(m, LayerNorm2d)]
    return names[-1] if names else None


def output_norm(encoder: nn.Module) -> LayerNorm2d | None:
    """The last LayerNorm2d of an image encoder, or None."""
    name = output_norm_name(encoder)
    return None if name is None else encoder.get_submodule(name)


def copy_output_norm(receiver: Sam, donor: Sam) -> bool:
    """Give the receiver's last LayerNorm2d the donor's affine (per-channel scale and offset);
    True when both have one of the same width. From its own init (offset 0, scale 1) Adam walks
    to the donor's offsets, of order 1, at about lr per step; copied, the receiver regresses
    only the normalised part."""
    mine, theirs = output_norm(receiver.image_encoder), output_norm(donor.image_encoder)
    if mine is None or theirs is None or mine.weight.shape != theirs.weight.shape:
        return False
    with torch.no_grad():
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)
    return True


def decoder_size_problem(architecture: dict, donor: Sam, source: str) -> str | None:
    """Why `donor`'s decoder cannot go into a SAM built from `architecture`, or None; the
    message gives the overrides that make the sizes match."""
    theirs = donor.architecture
    differ = [
        k for k in DECODER_ARGS if k in theirs and architecture.get(k, theirs[k]) != theirs[k]
    ]
    if not differ:
        return None
    fix = " ".join(f"model.{k}={theirs[k]}" for k in differ)
    return (
        f"model.decoder_from={source} has a prompt encoder and mask decoder of other sizes than "
        f"the model's ({', '.join(f'{k} {architecture.get(k)} vs {theirs[k]}' for k in differ)}); "
        f"set {fix}"
    )


def copy_decoder(receiver: Sam, donor: Sam) -> set[str]:
    """Copy the donor's prompt encoder and mask decoder; returns the receiver's keys set."""
    keys: set[str] = set()
    for part in DECODER_PARTS:
        theirs = getattr(donor, part).state_dict()
        getattr(receiver, part).load_state_dict(theirs)
        keys |= {f"{part}.{k}" for k in theirs}
    return keys


def transplant_decoder(receiver: Sam, path: str, encoder_keys: set[str] | None) -> set[str]:
    """`model.decoder_from`: the prompt encoder and mask decoder of the SAM checkpoint at
    `path` (any layout `load_sam` reads, ViT or TinyViT), and its encoder's output norm unless
    `encoder_keys` (what `model.init_from` loaded) already holds the receiver's. Returns the
    receiver's keys set. Raises WeightsError when the decoder sizes differ."""
    from sam_train.weights.sam_loading import load_sam

    donor = load_sam(path)
    problem = decoder_size_problem(receiver.architecture, donor, path)
    if problem:
        raise WeightsError(problem)
    keys = copy_decoder(receiver, donor)
    name = output_norm_name(receiver.image_encoder)
    if name is not None:
        norm_keys = {f"image_encoder.{name}.weight", f"image_encoder.{name}.bias"}
        if not norm_keys & (encoder_keys or set()) and copy_output_norm(receiver, donor):
            keys |= norm_keys
    return keys
