"""Adapter files: what a LoRA fine-tune changed, without the base weights it started from.

`sam-export CKPT --format adapter` writes a safetensors file holding the adapter tensors
(`<layer>.lora_A/lora_B/lora_scale`) and every other tensor the run trained or created (a
decoder trained in full, a new neck), that is every tensor that is not the base checkpoint's
own, bit for bit. Its metadata names the base (path and sha256), rank, alpha, targets and the
architecture; `load_sam_with_adapter(base, adapter)` rebuilds the fine-tuned model from the two
and refuses a base of another hash or architecture.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sam_train.models.lora import (
    LoraConfig,
    adapted_layers,
    add_lora,
    is_lora_key,
    merge_lora_state,
)
from sam_train.models.sam.sam import Sam, build_from_architecture
from sam_train.weights.checkpoints import LoadedWeights, WeightsError, file_sha256, read_weights
from sam_train.weights.init import init_sam_from
from sam_train.weights.safetensors_io import save_weights

FORMAT = "sam_train.adapter"


def _base_path(weights: LoadedWeights) -> Path:
    config = weights.metadata.get("config") or {}
    base = (config.get("model") or {}).get("init_from")
    if not base:
        raise WeightsError(
            f"{weights.path} was not started from a base checkpoint (model.init_from is unset): "
            "an adapter needs one; export the whole model with --format sam instead"
        )
    if not Path(base).is_file():
        raise WeightsError(
            f"the base checkpoint of {weights.path}, model.init_from={base}, is not there; "
            "the adapter records its sha256: put the file back at that path"
        )
    return Path(base)


def _base_model(architecture: dict, base: Path) -> tuple[Sam, set[str]]:
    """A `Sam` of `architecture` initialised from `base`, and the keys `base` provided."""
    sam = build_from_architecture(architecture)
    report = init_sam_from(sam, base)
    return sam, set(report.loaded)


def _lora_config(sd: dict[str, torch.Tensor], config: dict) -> dict[str, Any]:
    """Rank and alpha as the tensors hold them; targets and dropout as the run was set."""
    layers = adapted_layers(sd)
    rank = int(sd[f"{layers[0]}.lora_A"].shape[0])
    peft = dict(config.get("peft") or (config.get("model") or {}).get("peft") or {})
    return {
        "rank": rank,
        "alpha": float(sd[f"{layers[0]}.lora_scale"]) * rank,
        "dropout": float(peft.get("dropout", 0.0)),
        "targets": [str(t) for t in peft.get("targets", [])],
        "layers": layers,
    }


def without_adapters(weights: LoadedWeights) -> LoadedWeights:
    """The same weights with every adapter folded into its layer (a no-op without adapters)."""
    if not adapted_layers(weights.state_dict):
        return weights
    return replace(weights, state_dict=merge_lora_state(weights.state_dict))


def export_adapter(weights: LoadedWeights, out: Path, dtype: str = "fp32") -> Path:
    """The adapter tensors of a LoRA-trained stage-2 checkpoint, plus every tensor it does not
    share with its base, as safetensors with the base's path and sha256."""
    from sam_train.weights.safetensors_io import cast_floats
    from sam_train.weights.sam_loading import sam_architecture

    sd = weights.state_dict
    if weights.layout not in ("sam_train_sam", "tiny_vit_sam") or not adapted_layers(sd):
        raise WeightsError(
            f"--format adapter needs a stage-2 checkpoint trained with peft=lora; {weights.path} "
            "holds no adapter tensors (use --format sam for the whole model)"
        )
    base = _base_path(weights)
    plain = {k: v for k, v in sd.items() if not is_lora_key(k)}
    architecture = sam_architecture(plain, weights.metadata)
    reference, provided = _base_model(architecture, base)
    ref_sd = reference.state_dict()
    changed = {
        k: v
        for k, v in plain.items()
        if k not in provided or k not in ref_sd or not torch.equal(v, ref_sd[k].to(v.dtype))
    }
    tensors = {**{k: v for k, v in sd.items() if is_lora_key(k)}, **changed}
    meta = {
        "format": FORMAT,
        "base": str(base),
        "base_sha256": file_sha256(base),
        **_lora_config(sd, weights.metadata.get("config") or {}),
        "architecture": architecture,
        "source": str(weights.path),
        "source_sha256": file_sha256(weights.path) if weights.path else None,
        "dtype": dtype,
    }
    return save_weights(out, cast_floats(tensors, dtype), meta)


def read_adapter(path: str | Path) -> LoadedWeights:
    from sam_train.weights.safetensors_io import load_weights

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"adapter file {str(path)!r} does not exist")
    try:
        sd, meta = load_weights(path)
    except ValueError as err:
        raise WeightsError(str(err)) from err
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path} is not an adapter file (format {meta.get('format')!r}); write one with "
            "`sam-export CKPT --format adapter`"
        )
    return LoadedWeights(sd, "adapter", meta, path)


def _architecture_difference(base: Path, architecture: dict) -> str:
    """' and another architecture (...)' when `base`'s encoder is not the adapter's size."""
    from sam_train.weights.checkpoints import encoder_state
    from sam_train.weights.init import vit_depth

    if architecture.get("encoder", "vit") != "vit":
        return f" (the adapter belongs to a {architecture['encoder']} SAM)"
    try:
        enc = encoder_state(read_weights(base))
    except WeightsError:
        return ""
    have = (enc["patch_embed.proj.weight"].shape[0], vit_depth(enc))
    want = (architecture["encoder_embed_dim"], architecture["encoder_depth"])
    if have == want:
        return ""
    return (
        f" and another architecture (encoder width {have[0]}, depth {have[1]}; "
        f"the adapter needs width {want[0]}, depth {want[1]})"
    )


def load_sam_with_adapter(base: str | Path, adapter: str | Path) -> Sam:
    """The fine-tuned `Sam`: `base` (the checkpoint the run started from) plus `adapter`,
    with the adapters folded into the weights (plain `nn.Linear`s, eval mode)."""
    from sam_train.models.lora import merge_lora

    ad = read_adapter(adapter)
    meta = ad.metadata
    base = Path(base)
    if not base.is_file():
        raise WeightsError(f"base checkpoint {str(base)!r} does not exist")
    sha = file_sha256(base)
    if sha != meta["base_sha256"]:
        raise WeightsError(
            f"adapter {ad.path} was trained on base {meta['base']} (sha256 "
            f"{meta['base_sha256'][:16]}...); {base} has sha256 {sha[:16]}..."
            f"{_architecture_difference(base, meta['architecture'])}: pass the base it names"
        )
    sam, _ = _base_model(meta["architecture"], base)
    add_lora(sam, LoraConfig(targets=meta["layers"], rank=meta["rank"], alpha=meta["alpha"]))
    target = sam.state_dict()
    misfits = [
        f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape) if k in target else 'absent'}"
        for k, v in ad.state_dict.items()
        if k not in target or target[k].shape != v.shape
    ]
    if misfits:
        raise WeightsError(
            f"adapter {ad.path} does not fit a model of architecture {meta['architecture']}: "
            + "; ".join(misfits[:4])
        )
    sam.load_state_dict({**target, **ad.state_dict}, strict=True)
    return merge_lora(sam).eval()
